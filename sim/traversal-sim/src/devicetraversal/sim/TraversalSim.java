package devicetraversal.sim;

import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.time.Instant;
import java.time.format.DateTimeParseException;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * Stand-in for an Android app-crawler jar. It pretends to walk through the screens of an
 * app for a given time budget, prints machine-readable progress lines on stdout and leaves
 * a report folder behind. Several knobs make it fail in the ways a real crawler can, so the
 * code that drives it can be tested without a device.
 *
 * <p>Stdout lines: {@code RESUMED from=<step>}, {@code PROGRESS ...} once per step,
 * {@code FINDING <json>} for each crash or ANR (printed after its files are written and before
 * the PROGRESS line of its step), {@code PAUSED step=<n>} / {@code CONTINUED step=<n>} around a
 * pause requested through the control file, and {@code DONE ...} at the end.
 *
 * <p>Everything that touches shared state goes through {@link #lock}, because the shutdown
 * hook (SIGTERM) runs on its own thread while the main loop may still be going.
 */
public final class TraversalSim {

    /** Exit code when the final report cannot be written. */
    private static final int EXIT_REPORT_FAILED = 4;
    /** How often (in steps) the partial summary is refreshed while running. */
    private static final long SUMMARY_EVERY = 10;
    private static final Pattern RECORD_STEP = Pattern.compile(",\"step\":(\\d+),\"screen\":");
    private static final Pattern RECORD_FOUND_AT = Pattern.compile("\"foundAt\":\"([^\"]+)\"");

    private final Options opt;
    private final Report report;
    private final PrintStream out;
    private final PrintStream err;
    private final Object lock = new Object();

    // ---- state guarded by lock ----
    private long done;
    private long total;
    private double durationSec;
    private long crashesFound;
    private long anrsFound;
    /** Findings in the order they were found; those of earlier attempts first. */
    private final List<Finding> findings = new ArrayList<>();
    private String status = "running";
    private Instant startedAt;
    private Instant finishedAt;
    /** Set once a terminal report has been written; nothing is printed or written after that. */
    private boolean finalized;

    // ---- main-thread only ----
    private boolean stopRequested;
    /** The control file currently holds a 'pause' line. */
    private boolean pauseRequested;
    /** PAUSED has been printed and CONTINUED not yet. */
    private boolean paused;
    private String lastBadControlLine;
    private long noisePrinted;

    private TraversalSim(Options opt, PrintStream out, PrintStream err) {
        this.opt = opt;
        this.report = new Report(opt.outDir);
        this.out = out;
        this.err = err;
        this.durationSec = opt.durationSec;
        this.total = Options.stepsFor(opt.durationSec, opt.tickMs);
    }

    public static void main(String[] args) throws InterruptedException {
        System.setProperty("java.awt.headless", "true");
        PrintStream out = new PrintStream(new FileOutputStream(FileDescriptor.out), true, StandardCharsets.UTF_8);
        PrintStream err = new PrintStream(new FileOutputStream(FileDescriptor.err), true, StandardCharsets.UTF_8);
        Options opt;
        try {
            opt = Options.parse(args);
        } catch (Options.UsageException e) {
            err.println("traversal-sim: error: " + e.getMessage());
            err.println(Options.USAGE);
            err.flush();
            System.exit(2);
            return;
        }
        if (opt.help) {
            out.println(Options.USAGE);
            out.flush();
            return;
        }
        int code = new TraversalSim(opt, out, err).run();
        out.flush();
        err.flush();
        if (code != 0) {
            System.exit(code);
        }
    }

    private int run() throws InterruptedException {
        try {
            Files.createDirectories(opt.outDir);
        } catch (IOException | RuntimeException e) {
            err.println("traversal-sim: error: cannot create report folder " + opt.outDir + ": " + e);
            err.println(Options.USAGE);
            return 2;
        }

        long startStep;
        synchronized (lock) {
            startedAt = Instant.now();
            if (opt.resumeFrom != null) {
                // A checkpoint beyond the budget simply means there is nothing left to do.
                done = Math.min(opt.resumeFrom, total);
            }
            startStep = done;
            carryOverFindings();
        }
        if (opt.resumeFrom != null) {
            emit("RESUMED from=" + opt.resumeFrom);
        }

        try {
            report.writeScreenshots();
        } catch (IOException | RuntimeException e) {
            err.println("traversal-sim: warning: could not write screenshots: " + e);
        }
        writePartialSummary();
        Runtime.getRuntime().addShutdownHook(new Thread(this::onShutdown, "traversal-sim-shutdown"));

        if (doneAtStart(startStep)) {
            // Nothing left (resumed at or past the end): still report where we stand.
            synchronized (lock) {
                printProgress();
            }
        }

        long tickNanos = TimeUnit.MILLISECONDS.toNanos(opt.tickMs);
        long deadline = System.nanoTime();
        while (true) {
            long next;
            long currentTotal;
            synchronized (lock) {
                if (done >= total) {
                    break;
                }
                next = done + 1;
                currentTotal = total;
            }
            if (paused) {
                TimeUnit.MILLISECONDS.sleep(opt.tickMs);
            } else if (currentDuration() > 0) {
                deadline += tickNanos;
                sleepUntil(deadline);
            }
            pollControl();
            if (stopRequested) {
                break;
            }
            synchronized (lock) {
                if (done >= total) {
                    // The budget was cut to what is already done: report 100% and stop.
                    reportNewFindings();
                    printProgress();
                    break;
                }
                currentTotal = total;
            }
            if (pauseRequested != paused) {
                synchronized (lock) {
                    if (finalized) {
                        return 0;
                    }
                    paused = pauseRequested;
                    emit((paused ? "PAUSED step=" : "CONTINUED step=") + done);
                }
                if (paused) {
                    continue;
                }
                // Take this step now and pace from here: the paused ticks are not made up for.
                deadline = System.nanoTime();
            } else if (paused) {
                continue;
            }

            int pct = percentOf(next, currentTotal);
            if (opt.crashAt != null && pct >= opt.crashAt && faultArmed()) {
                simulateCrash();
            }
            if (opt.failAt != null && pct >= opt.failAt && faultArmed()) {
                return simulateFailure();
            }
            if (opt.hangAt != null && pct >= opt.hangAt && faultArmed()) {
                simulateHang();
            }

            synchronized (lock) {
                if (finalized) {
                    return 0; // a signal arrived; the shutdown hook owns the ending
                }
                done = next;
                reportNewFindings();
                printProgress();
            }
            printNoise(startStep, false);
            if (next % SUMMARY_EVERY == 0) {
                writePartialSummary();
            }
        }
        printNoise(startStep, true);
        return finish(stopRequested ? "stopped" : "completed");
    }

    // ------------------------------------------------------------------ steps and findings

    private boolean doneAtStart(long startStep) {
        synchronized (lock) {
            return startStep >= total;
        }
    }

    private static int percentOf(long step, long total) {
        return (int) Math.min(100, step * 100 / total);
    }

    /**
     * Findings are spread evenly: after step n of total, floor(count * n / total) have been found.
     * Writes and prints the ones that step n adds; call with the lock held, before printProgress().
     */
    private void reportNewFindings() {
        long crashTarget = spread(opt.crashes, done, total);
        while (crashesFound < crashTarget) {
            crashesFound++;
            reportFinding(BugCatalogue.CRASH, crashesFound);
        }
        long anrTarget = spread(opt.anrs, done, total);
        while (anrsFound < anrTarget) {
            anrsFound++;
            reportFinding(BugCatalogue.ANR, anrsFound);
        }
    }

    private void reportFinding(String kind, long index) {
        Finding f = new Finding(kind, index, BugCatalogue.describe(opt.packageName, opt.deviceId, kind, index), done,
                Instant.now());
        try {
            report.writeFinding(f);
        } catch (IOException | RuntimeException e) {
            // The app did crash; losing the evidence is no reason to hide that.
            err.println("traversal-sim: warning: could not write " + f.record() + ": " + e);
        }
        findings.add(f);
        emit("FINDING " + f.toJson());
    }

    /**
     * A resumed run has already found what spread() says for its checkpoint; those are not printed
     * again, but they stay in the report. Their step and time come from the record an earlier
     * attempt left in the same folder, or are worked out again when it is missing.
     */
    private void carryOverFindings() {
        crashesFound = spread(opt.crashes, done, total);
        anrsFound = spread(opt.anrs, done, total);
        for (long i = 1; i <= crashesFound; i++) {
            findings.add(carriedOver(BugCatalogue.CRASH, i, opt.crashes));
        }
        for (long i = 1; i <= anrsFound; i++) {
            findings.add(carriedOver(BugCatalogue.ANR, i, opt.anrs));
        }
        findings.sort(Comparator.comparingLong(Finding::step)); // stable: crashes first within a step
    }

    private Finding carriedOver(String kind, long index, long count) {
        // The first step n with floor(count * n / total) >= index.
        long step = Math.min(done, (index * total + count - 1) / count);
        Instant foundAt = null;
        try {
            String record = Files.readString(opt.outDir.resolve(Finding.recordOf(kind, index)), StandardCharsets.UTF_8);
            Matcher m = RECORD_STEP.matcher(record);
            if (m.find()) {
                step = Long.parseLong(m.group(1));
            }
            m = RECORD_FOUND_AT.matcher(record);
            if (m.find()) {
                foundAt = Instant.parse(m.group(1));
            }
        } catch (IOException | NumberFormatException | DateTimeParseException e) {
            // No usable record: keep the worked-out step.
        }
        return new Finding(kind, index, BugCatalogue.describe(opt.packageName, opt.deviceId, kind, index), step, foundAt);
    }

    private static long spread(long count, long step, long total) {
        if (step >= total) {
            return count;
        }
        return count * step / total;
    }

    private void printProgress() {
        emit("PROGRESS step=" + done + " total=" + total + " percent=" + percentOf(done, total)
                + " screens=" + done + " crashes=" + crashesFound + " anrs=" + anrsFound
                + " checkpoint=" + done);
    }

    private void emit(String line) {
        out.println(line);
        out.flush();
    }

    private double currentDuration() {
        synchronized (lock) {
            return durationSec;
        }
    }

    private static void sleepUntil(long deadline) throws InterruptedException {
        long left = deadline - System.nanoTime();
        if (left > 0) {
            TimeUnit.NANOSECONDS.sleep(left);
        }
    }

    /** Writes filler to stderr, spread over the steps this run performs; the rest at the end. */
    private void printNoise(long startStep, boolean flushRest) {
        if (opt.stderrNoise == 0) {
            return;
        }
        long target;
        synchronized (lock) {
            long planned = Math.max(1, total - startStep);
            long ran = Math.max(0, done - startStep);
            target = flushRest ? opt.stderrNoise : Math.min(opt.stderrNoise, opt.stderrNoise * ran / planned);
        }
        while (noisePrinted < target) {
            noisePrinted++;
            err.println("I/traversal: [noise " + noisePrinted + "/" + opt.stderrNoise + "] inspecting view hierarchy of "
                    + opt.packageName + " on " + opt.deviceId + ", nothing interesting here");
        }
        err.flush();
    }

    // ------------------------------------------------------------------ control file

    /**
     * Reads the control file, if any. It is rewritten whole on every change, one instruction a line:
     * "stop" ends the run, "duration=<sec>" changes the budget, "pause" holds the run while present.
     */
    private void pollControl() {
        if (opt.controlFile == null) {
            return;
        }
        List<String> lines;
        try {
            lines = Files.readAllLines(opt.controlFile, StandardCharsets.UTF_8);
        } catch (NoSuchFileException e) {
            pauseRequested = false;
            return;
        } catch (IOException | RuntimeException e) {
            return; // unreadable or being rewritten right now: try again next tick
        }
        boolean pause = false;
        for (String raw : lines) {
            String line = raw.trim();
            if (line.equals("stop")) {
                stopRequested = true;
            } else if (line.equals("pause")) {
                pause = true;
            } else if (line.startsWith("duration=")) {
                String value = line.substring("duration=".length()).trim();
                if (!Options.isDecimal(value) || Double.isInfinite(Double.parseDouble(value))) {
                    if (!line.equals(lastBadControlLine)) {
                        err.println("traversal-sim: warning: ignoring bad control line '" + line + "'");
                        lastBadControlLine = line;
                    }
                    continue;
                }
                applyDuration(Double.parseDouble(value));
            }
        }
        pauseRequested = pause;
    }

    private void applyDuration(double newDuration) {
        synchronized (lock) {
            if (newDuration == durationSec) {
                return;
            }
            long wanted = Options.stepsFor(newDuration, opt.tickMs);
            if (wanted > Integer.MAX_VALUE) {
                err.println("traversal-sim: warning: control duration " + newDuration + " is too long, ignored");
                return;
            }
            durationSec = newDuration;
            // Steps already taken cannot be undone, so the budget never drops below them.
            total = Math.max(wanted, done);
            err.println("traversal-sim: info: budget changed to " + Report.number(newDuration) + "s, total steps now "
                    + total);
        }
    }

    // ------------------------------------------------------------------ simulated faults

    private void simulateCrash() {
        synchronized (lock) {
            // Behave like a real JVM crash: leave the last partial report as it is.
            finalized = true;
        }
        throw new RuntimeException("simulated traversal crash at " + Report.number(opt.crashAt) + "%");
    }

    private int simulateFailure() {
        String pct = Report.number(opt.failAt);
        err.println("E/traversal: lost connection to " + opt.packageName + " on device " + opt.deviceId);
        err.println("E/traversal: giving up after " + done + " of " + total + " steps");
        err.println("fatal: simulated traversal failure at " + pct + "%");
        err.flush();
        synchronized (lock) {
            if (!finalized) {
                finalized = true;
                status = "failed";
                finishedAt = Instant.now();
                try {
                    report.writeSummaryAndIndex(snapshot());
                } catch (IOException | RuntimeException e) {
                    err.println("traversal-sim: warning: could not write report: " + e);
                }
            }
        }
        return opt.exitCode;
    }

    private static void simulateHang() throws InterruptedException {
        while (true) {
            Thread.sleep(60_000);
        }
    }

    // ------------------------------------------------------------------ report writing

    private Report.Facts snapshot() {
        Report.Facts f = new Report.Facts();
        f.packageName = opt.packageName;
        f.deviceId = opt.deviceId;
        f.agentUrl = opt.agentUrl;
        f.status = status;
        f.screens = done;
        f.crashes = crashesFound;
        f.anrs = anrsFound;
        f.steps = done;
        f.totalSteps = total;
        f.durationSec = durationSec;
        f.resumedFrom = opt.resumeFrom;
        f.tickMs = opt.tickMs;
        f.startedAt = startedAt;
        f.finishedAt = finishedAt;
        f.findings = List.copyOf(findings);
        return f;
    }

    private void writePartialSummary() {
        synchronized (lock) {
            if (finalized) {
                return;
            }
            try {
                report.writeSummaryAndIndex(snapshot());
            } catch (IOException | RuntimeException e) {
                err.println("traversal-sim: warning: could not update partial report: " + e);
            }
        }
    }

    /** Writes the terminal report and the DONE line. Returns the process exit code. */
    private int finish(String finalStatus) {
        synchronized (lock) {
            if (finalized) {
                return 0;
            }
            finalized = true;
            status = finalStatus;
            finishedAt = Instant.now();
            try {
                report.writeSummaryAndIndex(snapshot());
            } catch (IOException | RuntimeException e) {
                err.println("traversal-sim: error: could not write report to " + opt.outDir + ": " + e);
                err.flush();
                return EXIT_REPORT_FAILED;
            }
            emit("DONE screens=" + done + " crashes=" + crashesFound + " anrs=" + anrsFound + " status=" + status);
            return 0;
        }
    }

    /** Runs on SIGTERM/SIGINT (and on every normal exit, where it finds nothing to do). */
    private void onShutdown() {
        synchronized (lock) {
            if (finalized) {
                return;
            }
        }
        err.println("traversal-sim: terminated, writing partial report");
        finish("stopped");
        out.flush();
        err.flush();
    }

    /**
     * True when a fault knob may fire. With --faults-once the first firing leaves a marker file,
     * so the next attempt (which resumes) runs without the fault.
     */
    private boolean faultArmed() {
        if (opt.faultsOnce == null) {
            return true;
        }
        try {
            java.nio.file.Files.createFile(opt.faultsOnce);
            return true;
        } catch (java.nio.file.FileAlreadyExistsException e) {
            return false;
        } catch (java.io.IOException e) {
            return true;
        }
    }
}
