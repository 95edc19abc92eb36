package devicetraversal.sim;

import java.awt.Color;
import java.awt.Graphics2D;
import java.awt.image.BufferedImage;
import java.io.IOException;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.nio.file.AtomicMoveNotSupportedException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.time.Instant;
import java.util.List;
import javax.imageio.ImageIO;

/**
 * Writes the report folder: summary.json, index.html, a few PNG screenshots and, per finding,
 * findings/<kind>-<index>.png and findings/<kind>-<index>.json. Every file goes to a temporary name first and is then renamed into place, so a reader
 * polling the folder never sees a half-written file.
 */
final class Report {

    static final int SCREENSHOT_COUNT = 3;

    /** The facts that end up in summary.json and index.html. */
    static final class Facts {
        String packageName;
        String deviceId;
        String agentUrl;
        String status;
        long screens;
        long crashes;
        long anrs;
        long steps;
        long totalSteps;
        double durationSec;
        Long resumedFrom;
        long tickMs;
        Instant startedAt;
        Instant finishedAt;
        /** Every finding so far, carried-over ones from earlier attempts first. */
        List<Finding> findings = List.of();
    }

    private final Path dir;

    Report(Path dir) {
        this.dir = dir;
    }

    void writeScreenshots() throws IOException {
        Path shots = dir.resolve("screenshots");
        Files.createDirectories(shots);
        // One base colour per fake screen.
        Color[] colours = {new Color(0x3B82F6), new Color(0x10B981), new Color(0xF59E0B)};
        for (int i = 0; i < SCREENSHOT_COUNT; i++) {
            writePng(drawScreen(colours[i % colours.length], i), shots.resolve(screenshotName(i + 1)));
        }
    }

    /** Writes the finding's screenshot, then its record; the caller prints the FINDING line after both. */
    void writeFinding(Finding f) throws IOException {
        Files.createDirectories(dir.resolve("findings"));
        Color base = new Color(0x3B82F6 ^ (int) ((f.index() * 0x2F1D3L) & 0x7F7F7F));
        writePng(drawFinding(drawScreen(base, (int) (f.index() % 3)), f.kind()), dir.resolve(f.screenshot()));
        writeText(dir.resolve(f.record()), f.toJson() + "\n");
    }

    private static void writePng(BufferedImage img, Path target) throws IOException {
        Path tmp = tempFor(target);
        try {
            if (!ImageIO.write(img, "png", tmp.toFile())) {
                throw new IOException("no PNG writer available");
            }
            moveIntoPlace(tmp, target);
        } finally {
            Files.deleteIfExists(tmp);
        }
    }

    /** Greys the screen out and puts an "app has stopped" dialog with a red (crash) or amber (ANR) banner on it. */
    private static BufferedImage drawFinding(BufferedImage img, String kind) {
        Graphics2D g = img.createGraphics();
        try {
            int w = img.getWidth();
            int h = img.getHeight();
            g.setColor(new Color(0, 0, 0, 110));
            g.fillRect(0, 0, w, h);
            g.setColor(Color.WHITE);
            g.fillRect(12, 60, w - 24, 80);
            g.setColor(BugCatalogue.ANR.equals(kind) ? new Color(0xF59E0B) : new Color(0xDC2626));
            g.fillRect(12, 60, w - 24, 18);
            g.setColor(new Color(0x94A3B8));
            g.fillRect(20, 88, w - 40, 6);
            g.fillRect(20, 100, w - 56, 6);
            g.setColor(new Color(0x2563EB));
            g.fillRect(w - 50, 120, 30, 10);
        } finally {
            g.dispose();
        }
        return img;
    }

    static String screenshotName(int n) {
        return String.format("screen-%03d.png", n);
    }

    /** Draws a crude phone screen: status bar, toolbar, a list of rows and a button. */
    private static BufferedImage drawScreen(Color base, int variant) {
        int w = 120;
        int h = 200;
        BufferedImage img = new BufferedImage(w, h, BufferedImage.TYPE_INT_RGB);
        Graphics2D g = img.createGraphics();
        try {
            g.setColor(new Color(0xF8FAFC));
            g.fillRect(0, 0, w, h);
            g.setColor(base.darker());
            g.fillRect(0, 0, w, 8);
            g.setColor(base);
            g.fillRect(0, 8, w, 24);
            g.setColor(Color.WHITE);
            g.fillRect(8, 16, 40, 8);
            int rows = 3 + variant;
            for (int r = 0; r < rows; r++) {
                int y = 40 + r * 24;
                g.setColor(new Color(0xE2E8F0));
                g.fillRect(6, y, w - 12, 20);
                g.setColor(base);
                g.fillOval(10, y + 4, 12, 12);
                g.setColor(new Color(0x94A3B8));
                g.fillRect(28, y + 7, 40 + ((r * 17 + variant * 11) % 40), 6);
            }
            g.setColor(base.darker());
            g.fillRoundRect(w - 40, h - 40, 30, 30, 30, 30);
        } finally {
            g.dispose();
        }
        return img;
    }

    void writeSummaryAndIndex(Facts f) throws IOException {
        Files.createDirectories(dir);
        writeText(dir.resolve("summary.json"), toJson(f));
        writeText(dir.resolve("index.html"), toHtml(f));
    }

    static String toJson(Facts f) {
        StringBuilder sb = new StringBuilder();
        sb.append("{\n");
        field(sb, "packageName", jsonString(f.packageName), false);
        field(sb, "deviceId", jsonString(f.deviceId), false);
        field(sb, "status", jsonString(f.status), false);
        field(sb, "screens", Long.toString(f.screens), false);
        field(sb, "crashes", Long.toString(f.crashes), false);
        field(sb, "anrs", Long.toString(f.anrs), false);
        field(sb, "findings", findingsJson(f.findings), false);
        field(sb, "steps", Long.toString(f.steps), false);
        field(sb, "totalSteps", Long.toString(f.totalSteps), false);
        field(sb, "durationSec", number(f.durationSec), false);
        field(sb, "resumedFrom", f.resumedFrom == null ? "null" : f.resumedFrom.toString(), false);
        field(sb, "startedAt", f.startedAt == null ? "null" : jsonString(f.startedAt.toString()), false);
        field(sb, "finishedAt", f.finishedAt == null ? "null" : jsonString(f.finishedAt.toString()), false);
        field(sb, "agentUrl", f.agentUrl == null ? "null" : jsonString(f.agentUrl), false);
        field(sb, "tickMs", Long.toString(f.tickMs), true);
        sb.append("}\n");
        return sb.toString();
    }

    private static String findingsJson(List<Finding> findings) {
        if (findings.isEmpty()) {
            return "[]";
        }
        StringBuilder sb = new StringBuilder("[\n");
        for (int i = 0; i < findings.size(); i++) {
            Finding x = findings.get(i);
            sb.append("    {\"kind\": ").append(jsonString(x.kind()))
                    .append(", \"index\": ").append(x.index())
                    .append(", \"exception\": ").append(jsonString(x.bug().exception()))
                    .append(", \"step\": ").append(x.step())
                    .append(i + 1 < findings.size() ? "},\n" : "}\n");
        }
        return sb.append("  ]").toString();
    }

    private static void field(StringBuilder sb, String key, String rawValue, boolean last) {
        sb.append("  ").append(jsonString(key)).append(": ").append(rawValue);
        sb.append(last ? "\n" : ",\n");
    }

    /** Plain decimal rendering without a trailing ".0" (1 rather than 1.0). */
    static String number(double d) {
        return BigDecimal.valueOf(d).stripTrailingZeros().toPlainString();
    }

    static String jsonString(String s) {
        StringBuilder sb = new StringBuilder(s.length() + 2);
        sb.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"':
                    sb.append("\\\"");
                    break;
                case '\\':
                    sb.append("\\\\");
                    break;
                case '\n':
                    sb.append("\\n");
                    break;
                case '\r':
                    sb.append("\\r");
                    break;
                case '\t':
                    sb.append("\\t");
                    break;
                case '\b':
                    sb.append("\\b");
                    break;
                case '\f':
                    sb.append("\\f");
                    break;
                default:
                    // Control characters, the two JS line separators and any unpaired
                    // surrogate are written as hex escapes so the output stays valid UTF-8 JSON.
                    boolean loneSurrogate = Character.isSurrogate(c)
                            && !(Character.isHighSurrogate(c) && i + 1 < s.length() && Character.isLowSurrogate(s.charAt(i + 1)))
                            && !(Character.isLowSurrogate(c) && i > 0 && Character.isHighSurrogate(s.charAt(i - 1)));
                    if (c < 0x20 || c == 0x2028 || c == 0x2029 || loneSurrogate) {
                        sb.append(String.format("\\u%04x", (int) c));
                    } else {
                        sb.append(c);
                    }
            }
        }
        return sb.append('"').toString();
    }

    static String html(String s) {
        if (s == null) {
            return "";
        }
        StringBuilder sb = new StringBuilder(s.length());
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '&':
                    sb.append("&amp;");
                    break;
                case '<':
                    sb.append("&lt;");
                    break;
                case '>':
                    sb.append("&gt;");
                    break;
                case '"':
                    sb.append("&quot;");
                    break;
                case '\'':
                    sb.append("&#39;");
                    break;
                default:
                    sb.append(c);
            }
        }
        return sb.toString();
    }

    static String toHtml(Facts f) {
        StringBuilder sb = new StringBuilder();
        sb.append("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
        sb.append("<title>Traversal report: ").append(html(f.packageName)).append("</title>\n");
        sb.append("<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
                + "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
                + "img{margin:8px;border:1px solid #999}</style>\n");
        sb.append("</head>\n<body>\n");
        sb.append("<h1>Traversal report</h1>\n<table>\n");
        row(sb, "Package", f.packageName);
        row(sb, "Device", f.deviceId);
        row(sb, "Agent", f.agentUrl == null ? "-" : f.agentUrl);
        row(sb, "Status", f.status);
        row(sb, "Screens visited", Long.toString(f.screens));
        row(sb, "Crashes found", Long.toString(f.crashes));
        row(sb, "ANRs found", Long.toString(f.anrs));
        row(sb, "Steps", f.steps + " / " + f.totalSteps);
        row(sb, "Duration budget (s)", number(f.durationSec));
        row(sb, "Resumed from step", f.resumedFrom == null ? "-" : f.resumedFrom.toString());
        row(sb, "Started", f.startedAt == null ? "-" : f.startedAt.toString());
        row(sb, "Finished", f.finishedAt == null ? "-" : f.finishedAt.toString());
        sb.append("</table>\n<h2>Screenshots</h2>\n<div>\n");
        for (int i = 1; i <= SCREENSHOT_COUNT; i++) {
            String name = screenshotName(i);
            sb.append("<img src=\"screenshots/").append(name).append("\" alt=\"screen ").append(i)
                    .append("\" width=\"120\" height=\"200\">\n");
        }
        sb.append("</div>\n");
        findingsTable(sb, f.findings);
        sb.append("</body>\n</html>\n");
        return sb.toString();
    }

    private static void findingsTable(StringBuilder sb, List<Finding> findings) {
        sb.append("<h2>Findings</h2>\n");
        if (findings.isEmpty()) {
            sb.append("<p>None.</p>\n");
            return;
        }
        sb.append("<table>\n<tr><th>Kind</th><th>Exception</th><th>Message</th><th>Step</th><th>Screenshot</th></tr>\n");
        for (Finding x : findings) {
            sb.append("<tr><td>").append(html(x.kind() + " " + x.index()))
                    .append("</td><td>").append(html(x.bug().exception()))
                    .append("</td><td>").append(html(x.bug().message()))
                    .append("</td><td>").append(x.step())
                    .append("</td><td><a href=\"").append(html(x.screenshot())).append("\">")
                    .append(html(x.kind() + "-" + x.index() + ".png")).append("</a></td></tr>\n");
        }
        sb.append("</table>\n");
    }

    private static void row(StringBuilder sb, String label, String value) {
        sb.append("<tr><th>").append(html(label)).append("</th><td>").append(html(value)).append("</td></tr>\n");
    }

    private void writeText(Path target, String text) throws IOException {
        Path tmp = tempFor(target);
        try {
            Files.write(tmp, text.getBytes(StandardCharsets.UTF_8));
            moveIntoPlace(tmp, target);
        } finally {
            Files.deleteIfExists(tmp);
        }
    }

    private static Path tempFor(Path target) {
        return target.resolveSibling("." + target.getFileName() + ".tmp-" + ProcessHandle.current().pid());
    }

    private static void moveIntoPlace(Path tmp, Path target) throws IOException {
        try {
            Files.move(tmp, target, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
        } catch (AtomicMoveNotSupportedException e) {
            Files.move(tmp, target, StandardCopyOption.REPLACE_EXISTING);
        }
    }
}
