package devicetraversal.sim;

import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.HashSet;
import java.util.Set;
import java.util.regex.Pattern;

/**
 * Command-line options of the simulator. Parsing is done by hand: every option is a
 * "--name value" pair (the "--name=value" spelling is accepted as well).
 */
final class Options {

    static final String USAGE = String.join("\n",
            "usage: java -jar traversal-sim.jar --device <id> --package <pkg> --out <dir> --duration <sec> [options]",
            "",
            "required:",
            "  --device <id>          device serial the traversal runs on",
            "  --package <pkg>        package name of the app under test",
            "  --out <dir>            report folder (created when missing)",
            "  --duration <sec>       time budget in seconds, decimals allowed, 0 = finish at once",
            "optional:",
            "  --agent <url>          device agent URL (only recorded in the report)",
            "  --tick-ms <ms>         length of one step in milliseconds (default 200)",
            "  --resume-from <step>   continue from this checkpoint instead of step 0",
            "  --crashes <n>          app crashes the traversal finds (default 0), spread evenly over the steps;",
            "                         each is written to <out>/findings/crash-<i>.{png,json} and then printed",
            "                         as 'FINDING <json>' before the PROGRESS line of its step",
            "  --anrs <n>             ANRs the traversal finds (default 0), reported like crashes (anr-<i>.*)",
            "  --control <path>       file polled every tick, rewritten whole, one instruction a line:",
            "                         'duration=<sec>' changes the budget, 'stop' ends the run, 'pause' takes",
            "                         no steps while the line is there (prints PAUSED step=<n>, then",
            "                         CONTINUED step=<n> once it is gone)",
            "test knobs:",
            "  --fail-at <percent>    exit with --exit-code once progress reaches <percent>",
            "  --exit-code <n>        exit code used by --fail-at (default 3)",
            "  --crash-at <percent>   throw an uncaught exception at <percent> (exit code 1)",
            "  --hang-at <percent>    stop output and sleep until killed at <percent>",
            "  --stderr-noise <n>     write n filler lines to stderr over the run",
            "  --faults-once <path>   fire the fault knobs only while <path> does not exist (created when one fires),",
            "                         so a retried attempt runs clean");

    private static final Pattern UNSIGNED_INT = Pattern.compile("[0-9]+");
    private static final Pattern UNSIGNED_DECIMAL = Pattern.compile("[0-9]+(\\.[0-9]*)?|\\.[0-9]+");

    String deviceId;
    String agentUrl;
    String packageName;
    Path outDir;
    double durationSec = -1;
    long tickMs = 200;
    Long resumeFrom;
    long crashes;
    long anrs;
    Double failAt;
    int exitCode = 3;
    Double crashAt;
    Double hangAt;
    long stderrNoise;
    Path controlFile;
    Path faultsOnce;
    boolean help;

    /** Raised for anything wrong on the command line; the caller prints usage and exits 2. */
    static final class UsageException extends Exception {
        private static final long serialVersionUID = 1L;

        UsageException(String message) {
            super(message);
        }
    }

    static Options parse(String[] args) throws UsageException {
        Options o = new Options();
        Set<String> seen = new HashSet<>();
        int i = 0;
        while (i < args.length) {
            String arg = args[i++];
            if (arg.equals("--help") || arg.equals("-h")) {
                o.help = true;
                continue;
            }
            if (!arg.startsWith("--") || arg.length() == 2) {
                throw new UsageException("unexpected argument '" + arg + "'");
            }
            String name;
            String value;
            int eq = arg.indexOf('=');
            if (eq > 0) {
                name = arg.substring(2, eq);
                value = arg.substring(eq + 1);
            } else {
                name = arg.substring(2);
                if (i >= args.length) {
                    throw new UsageException("option --" + name + " needs a value");
                }
                value = args[i++];
            }
            if (!seen.add(name)) {
                throw new UsageException("option --" + name + " given more than once");
            }
            o.apply(name, value);
        }
        if (o.help) {
            return o;
        }
        if (o.deviceId == null) {
            throw new UsageException("missing required option --device");
        }
        if (o.packageName == null) {
            throw new UsageException("missing required option --package");
        }
        if (o.outDir == null) {
            throw new UsageException("missing required option --out");
        }
        if (o.durationSec < 0) {
            throw new UsageException("missing required option --duration");
        }
        if (stepsFor(o.durationSec, o.tickMs) > Integer.MAX_VALUE) {
            throw new UsageException("--duration is too long for --tick-ms " + o.tickMs);
        }
        return o;
    }

    private void apply(String name, String value) throws UsageException {
        switch (name) {
            case "device":
                deviceId = nonEmpty(name, value);
                break;
            case "agent":
                agentUrl = nonEmpty(name, value);
                break;
            case "package":
                packageName = nonEmpty(name, value);
                break;
            case "out":
                outDir = toPath(name, value);
                break;
            case "duration":
                durationSec = decimal(name, value);
                break;
            case "tick-ms":
                tickMs = integer(name, value, 1, 3_600_000);
                break;
            case "resume-from":
                resumeFrom = integer(name, value, 0, Integer.MAX_VALUE);
                break;
            case "crashes":
                crashes = integer(name, value, 0, 1_000_000);
                break;
            case "anrs":
                anrs = integer(name, value, 0, 1_000_000);
                break;
            case "fail-at":
                failAt = percent(name, value);
                break;
            case "exit-code":
                exitCode = (int) integer(name, value, 0, 255);
                break;
            case "crash-at":
                crashAt = percent(name, value);
                break;
            case "hang-at":
                hangAt = percent(name, value);
                break;
            case "stderr-noise":
                stderrNoise = integer(name, value, 0, 100_000_000);
                break;
            case "control":
                controlFile = toPath(name, value);
                break;
            case "faults-once":
                faultsOnce = toPath(name, value);
                break;
            default:
                throw new UsageException("unknown option --" + name);
        }
    }

    /** Number of steps a budget of durationSec is worth; never below one. */
    static long stepsFor(double durationSec, long tickMs) {
        return Math.max(1L, Math.round(durationSec * 1000.0 / tickMs));
    }

    private static String nonEmpty(String name, String value) throws UsageException {
        if (value.trim().isEmpty()) {
            throw new UsageException("option --" + name + " must not be empty");
        }
        return value;
    }

    private static Path toPath(String name, String value) throws UsageException {
        try {
            return Paths.get(nonEmpty(name, value));
        } catch (RuntimeException e) {
            throw new UsageException("option --" + name + " is not a valid path: " + value);
        }
    }

    static boolean isDecimal(String value) {
        return UNSIGNED_DECIMAL.matcher(value).matches();
    }

    private static double decimal(String name, String value) throws UsageException {
        if (!isDecimal(value)) {
            throw new UsageException("option --" + name + " expects a non-negative number, got '" + value + "'");
        }
        double d = Double.parseDouble(value);
        if (Double.isInfinite(d)) {
            throw new UsageException("option --" + name + " is out of range: " + value);
        }
        return d;
    }

    private static double percent(String name, String value) throws UsageException {
        double d = decimal(name, value);
        if (d > 100) {
            throw new UsageException("option --" + name + " expects a percentage between 0 and 100, got '" + value + "'");
        }
        return d;
    }

    private static long integer(String name, String value, long min, long max) throws UsageException {
        if (!UNSIGNED_INT.matcher(value).matches()) {
            throw new UsageException("option --" + name + " expects a whole number, got '" + value + "'");
        }
        long n;
        try {
            n = Long.parseLong(value);
        } catch (NumberFormatException e) {
            n = Long.MAX_VALUE;
        }
        if (n < min || n > max) {
            throw new UsageException("option --" + name + " must be between " + min + " and " + max + ", got " + value);
        }
        return n;
    }
}
