package devicetraversal.sim;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

/**
 * The bugs the simulated app has. What a finding is (exception class, in-app classes and methods)
 * depends only on (package, kind, index), so the same app crashes the same way on every device and
 * a crash grouper must give those crashes one signature. What a grouper has to ignore does vary with
 * the device, as it does between real phones: every line number is shifted by a small offset, and
 * some messages carry an object address ({@code @7f3a21c}).
 *
 * <p>Indexes 1..(sites x variants) of one package and kind are all different bugs: the index walks a
 * bijection onto (in-app site, variant) pairs that starts and strides at a point hashed from
 * (package, kind). Past that range the in-app package gets a generation suffix ({@code cart.v2}).
 */
final class BugCatalogue {

    static final String CRASH = "crash";
    static final String ANR = "anr";

    /** Exception class, message and stack frames (top first) of one finding. */
    record Bug(String exception, String message, List<String> frames) {
    }

    private enum Trigger { CLICK, POST }

    /** Where an in-app crash is thrown, and the UI callback (a lambda in {@code host}) that got there. */
    private record Site(String area, String cls, int line, String method, String host, String hostMethod,
            int lambda, int lambdaLine, Trigger trigger, String model) {
    }

    /** A crash type: message template and an optional library frame above the in-app one. */
    private record Failure(String exception, String message, String thrower) {
    }

    /** A blocking call made on the main thread, with the frames it is stuck in. */
    private record Blocker(String area, String cls, int line, String method, List<String> waitFrames) {
    }

    private static final List<Site> SITES = List.of(
            new Site("cart", "CartFragment", 88, "onItemClick", "CartFragment", "onViewCreated", 2, 61, Trigger.CLICK, "CartItem"),
            new Site("login", "LoginViewModel", 142, "submit", "LoginFragment", "onViewCreated", 0, 47, Trigger.CLICK, "Credentials"),
            new Site("checkout", "PaymentPresenter", 203, "confirmOrder", "CheckoutFragment", "onViewCreated", 1, 95, Trigger.CLICK, "PaymentMethod"),
            new Site("feed", "FeedAdapter", 67, "onBindViewHolder", "FeedFragment", "onResume", 0, 112, Trigger.POST, "FeedEntry"),
            new Site("profile", "ProfileFragment", 154, "renderAvatar", "ProfileFragment", "onStart", 3, 80, Trigger.POST, "UserProfile"),
            new Site("search", "SearchViewModel", 76, "onQueryChanged", "SearchFragment", "onCreateView", 1, 58, Trigger.POST, "SearchQuery"),
            new Site("settings", "SettingsFragment", 119, "onToggleNotifications", "SettingsFragment", "onViewCreated", 4, 66, Trigger.CLICK, "NotificationSettings"),
            new Site("product", "ProductDetailActivity", 231, "showGallery", "ProductDetailActivity", "onCreate", 0, 89, Trigger.CLICK, "ProductImage"),
            new Site("orders", "OrderHistoryFragment", 98, "loadMore", "OrderHistoryFragment", "onViewCreated", 5, 73, Trigger.POST, "Order"),
            new Site("map", "StoreLocatorFragment", 171, "onMapReady", "StoreLocatorFragment", "onViewCreated", 0, 52, Trigger.POST, "StoreLocation"),
            new Site("chat", "MessageComposer", 64, "send", "ChatActivity", "onCreate", 2, 137, Trigger.CLICK, "ChatMessage"),
            new Site("onboarding", "OnboardingPagerAdapter", 45, "createFragment", "OnboardingActivity", "onCreate", 1, 71, Trigger.POST, "OnboardingPage"));

    // Placeholders: {pkg} {model} {host} {addr} (device-dependent) {n} (from the bug's hash).
    private static final List<Failure> FAILURES = List.of(
            new Failure("java.lang.NullPointerException",
                    "Attempt to invoke virtual method 'java.lang.String {pkg}.model.{model}.getId()' on a null object reference", null),
            new Failure("java.lang.IllegalStateException",
                    "Cannot call this method while RecyclerView is computing a layout or scrolling androidx.recyclerview.widget.RecyclerView{{addr} VFED..... ......ID 0,0-1080,1920 #7f0a01b2 app:id/list}",
                    "androidx.recyclerview.widget.RecyclerView.assertNotInLayoutOrScroll(RecyclerView.java:3017)"),
            new Failure("java.lang.IndexOutOfBoundsException", "Index {n} out of bounds for length {n}",
                    "java.util.ArrayList.get(ArrayList.java:437)"),
            new Failure("java.lang.IllegalArgumentException", "View=DecorView@{addr}[{host}] not attached to window manager",
                    "android.view.WindowManagerGlobal.findViewLocked(WindowManagerGlobal.java:604)"),
            new Failure("java.lang.ClassCastException", "{pkg}.model.{model} cannot be cast to java.lang.String", null),
            new Failure("android.view.WindowManager$BadTokenException",
                    "Unable to add window -- token android.os.BinderProxy@{addr} is not valid; is your activity running?",
                    "android.view.ViewRootImpl.setView(ViewRootImpl.java:1126)"),
            new Failure("java.lang.NumberFormatException", "For input string: \"{n},99\"",
                    "java.lang.Integer.parseInt(Integer.java:747)"),
            new Failure("android.content.ActivityNotFoundException",
                    "No Activity found to handle Intent { act=android.intent.action.VIEW dat=market://details?id={pkg} }",
                    "android.app.Instrumentation.checkStartActivityResult(Instrumentation.java:2067)"));

    private static final List<Blocker> BLOCKERS = List.of(
            new Blocker("sync", "SyncRepository", 120, "awaitInitialSync",
                    List.of("java.lang.Object.wait(Native Method)", "java.lang.Object.wait(Object.java:442)")),
            new Blocker("db", "OrderDao_Impl", 187, "getAll",
                    List.of("android.database.sqlite.SQLiteConnection.nativeExecuteForCursorWindow(Native Method)")),
            new Blocker("net", "ApiClient", 96, "fetchProfileBlocking",
                    List.of("java.net.SocketInputStream.socketRead0(Native Method)")),
            new Blocker("image", "ThumbnailCache", 73, "decodeFromDisk",
                    List.of("android.graphics.BitmapFactory.nativeDecodeStream(Native Method)")),
            new Blocker("net", "RetryPolicy", 58, "backoff",
                    List.of("java.lang.Thread.sleep(Native Method)", "java.lang.Thread.sleep(Thread.java:442)")),
            new Blocker("analytics", "EventLogger", 141, "flushSync",
                    List.of("android.os.BinderProxy.transactNative(Native Method)")),
            new Blocker("prefs", "SettingsStore", 64, "migrate",
                    List.of("sun.misc.Unsafe.park(Native Method)", "java.util.concurrent.locks.LockSupport.park(LockSupport.java:190)")),
            new Blocker("auth", "TokenStore", 84, "readEncrypted", List.of("libcore.io.Linux.read(Native Method)")));

    private static final List<String> ANR_MESSAGES = List.of(
            "Input dispatching timed out (Waited 5000ms for KeyEvent)",
            "Input dispatching timed out (ActivityRecord{{addr} u0 {pkg}/.MainActivity t{n}}, Waited 5000ms for MotionEvent)",
            "executing service {pkg}/.sync.SyncService",
            "Input dispatching timed out (Waited 5000ms for MotionEvent)");

    private static final List<String> CLICK_TAIL = List.of(
            "android.view.View.performClick(View.java:7448)",
            "android.os.Handler.handleCallback(Handler.java:938)",
            "android.os.Handler.dispatchMessage(Handler.java:99)",
            "android.os.Looper.loop(Looper.java:223)",
            "android.app.ActivityThread.main(ActivityThread.java:7656)",
            "java.lang.reflect.Method.invoke(Native Method)",
            "com.android.internal.os.RuntimeInit$MethodAndArgsCaller.run(RuntimeInit.java:592)",
            "com.android.internal.os.ZygoteInit.main(ZygoteInit.java:947)");
    private static final List<String> POST_TAIL = CLICK_TAIL.subList(1, CLICK_TAIL.size());

    private BugCatalogue() {
    }

    /** The bug behind finding number {@code index} (1-based) of {@code kind} in {@code packageName}, as seen on {@code deviceId}. */
    static Bug describe(String packageName, String deviceId, String kind, long index) {
        if (index < 1) {
            throw new IllegalArgumentException("finding index must be 1 or more, got " + index);
        }
        boolean anr = ANR.equals(kind);
        int firstSize = anr ? BLOCKERS.size() : SITES.size();
        int secondSize = anr ? SITES.size() : FAILURES.size();
        long seed = hash(packageName, kind);
        long k = index - 1;
        long perGeneration = (long) firstSize * secondSize;
        long generation = k / perGeneration;
        long r = k % perGeneration;
        // r -> (r*stride + start) mod firstSize is a bijection on residues, and for one residue the
        // quotient r / firstSize is distinct, so the pair (first, second) is distinct for every r.
        int first = (int) Math.floorMod(r * stride(seed, firstSize) + seed, (long) firstSize);
        int second = (int) Math.floorMod(r / firstSize + r % firstSize + (seed >>> 32), (long) secondSize);
        String suffix = generation == 0 ? "" : ".v" + (generation + 1);

        Context c = new Context(packageName, deviceId, kind, index, suffix);
        return anr ? anrBug(c, BLOCKERS.get(first), SITES.get(second)) : crashBug(c, SITES.get(first), FAILURES.get(second));
    }

    /** Facts that are the same for every frame of one finding. */
    private record Context(String pkg, String device, String kind, long index, String areaSuffix) {
        int lineOffset() {
            return (int) Math.floorMod(hash("line-offset", device), 4L);
        }

        String address() {
            return Long.toHexString(0x1000000L | (hash("address", device, pkg, kind, Long.toString(index)) & 0xFFFFFFFL));
        }

        int number() {
            return 2 + (int) Math.floorMod(hash("n", pkg, kind, Long.toString(index)), 30L);
        }

        String inApp(String area, String cls) {
            return pkg + "." + area + areaSuffix + "." + cls;
        }

        String line(String frame) {
            return shiftLine(frame, lineOffset());
        }
    }

    private static Bug crashBug(Context c, Site s, Failure f) {
        List<String> frames = new ArrayList<>();
        if (f.thrower() != null) {
            frames.add(c.line(f.thrower()));
        }
        frames.add(frame(c, c.inApp(s.area(), s.cls()), s.method(), s.cls(), s.line()));
        addCallback(c, s, frames);
        String message = f.message()
                .replace("{pkg}", c.pkg())
                .replace("{model}", s.model())
                .replace("{host}", s.host())
                .replace("{addr}", c.address())
                .replace("{n}", Integer.toString(c.number()));
        return new Bug(f.exception(), message, List.copyOf(frames));
    }

    private static Bug anrBug(Context c, Blocker b, Site entry) {
        List<String> frames = new ArrayList<>();
        for (String f : b.waitFrames()) {
            frames.add(c.line(f));
        }
        frames.add(frame(c, c.inApp(b.area(), b.cls()), b.method(), b.cls(), b.line()));
        // The main thread ran the blocking call from a posted callback of the entry screen.
        addCallback(c, new Site(entry.area(), entry.cls(), entry.line(), entry.method(), entry.host(), entry.hostMethod(),
                entry.lambda(), entry.lambdaLine(), Trigger.POST, entry.model()), frames);
        String template = ANR_MESSAGES.get((int) Math.floorMod(hash("anr-message", c.pkg(), Long.toString(c.index())),
                (long) ANR_MESSAGES.size()));
        String message = template.replace("{pkg}", c.pkg()).replace("{addr}", c.address())
                .replace("{n}", Integer.toString(c.number()));
        return new Bug("ANR", message, List.copyOf(frames));
    }

    /** The lambda in the host, its D8 synthetic class and the framework frames that called it. */
    private static void addCallback(Context c, Site s, List<String> frames) {
        String host = c.inApp(s.area(), s.host());
        frames.add(frame(c, host, "lambda$" + s.hostMethod() + "$" + s.lambda(), s.host(), s.lambdaLine()));
        String callback = s.trigger() == Trigger.CLICK ? "onClick" : "run";
        frames.add(host + "$$ExternalSyntheticLambda" + s.lambda() + "." + callback + "(Unknown Source:2)");
        for (String f : s.trigger() == Trigger.CLICK ? CLICK_TAIL : POST_TAIL) {
            frames.add(c.line(f));
        }
    }

    private static String frame(Context c, String cls, String method, String file, int line) {
        return cls + "." + method + "(" + file + ".java:" + (line + c.lineOffset()) + ")";
    }

    /** Adds {@code offset} to the line number of a "Foo.bar(Foo.java:12)" frame; other frames stay. */
    private static String shiftLine(String frame, int offset) {
        int colon = frame.lastIndexOf(".java:");
        if (colon < 0 || offset == 0) {
            return frame;
        }
        int start = colon + ".java:".length();
        int line = Integer.parseInt(frame.substring(start, frame.length() - 1));
        return frame.substring(0, start) + (line + offset) + ")";
    }

    private static long stride(long seed, int size) {
        long s = 1 + Math.floorMod(seed >>> 16, (long) size);
        while (gcd(s, size) != 1) {
            s++;
        }
        return s;
    }

    private static long gcd(long a, long b) {
        return b == 0 ? a : gcd(b, a % b);
    }

    /** FNV-1a over the UTF-8 parts (NUL-separated), then a SplitMix64 finaliser; stable across JVMs. */
    static long hash(String... parts) {
        long h = 0xcbf29ce484222325L;
        for (String part : parts) {
            for (byte b : part.getBytes(StandardCharsets.UTF_8)) {
                h ^= b & 0xff;
                h *= 0x100000001b3L;
            }
            h *= 0x100000001b3L; // a NUL byte between parts: ("ab","c") and ("a","bc") differ
        }
        h ^= h >>> 30;
        h *= 0xbf58476d1ce4e5b9L;
        h ^= h >>> 27;
        h *= 0x94d049bb133111ebL;
        h ^= h >>> 31;
        return h;
    }
}
