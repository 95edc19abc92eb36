package devicetraversal.sim;

import java.time.Instant;

/**
 * One crash or ANR the traversal ran into. Its JSON form is both the payload of the
 * {@code FINDING} stdout line and the content of {@code findings/<kind>-<index>.json}:
 * {@code {"kind","index","exception","message","frames","step","screen","screenshot","foundAt"}}.
 *
 * @param foundAt null for a finding carried over from an earlier attempt whose record is gone
 */
record Finding(String kind, long index, BugCatalogue.Bug bug, long step, Instant foundAt) {

    /** Report-relative path of the screenshot taken when the finding happened. */
    String screenshot() {
        return "findings/" + kind + "-" + index + ".png";
    }

    /** Report-relative path of the JSON record. */
    String record() {
        return recordOf(kind, index);
    }

    static String recordOf(String kind, long index) {
        return "findings/" + kind + "-" + index + ".json";
    }

    String screen() {
        return "screen-" + step;
    }

    /** Single-line JSON, safe to print after "FINDING ". */
    String toJson() {
        StringBuilder sb = new StringBuilder(1024);
        sb.append("{\"kind\":").append(Report.jsonString(kind));
        sb.append(",\"index\":").append(index);
        sb.append(",\"exception\":").append(Report.jsonString(bug.exception()));
        sb.append(",\"message\":").append(Report.jsonString(bug.message()));
        sb.append(",\"frames\":[");
        for (int i = 0; i < bug.frames().size(); i++) {
            sb.append(i == 0 ? "" : ",").append(Report.jsonString(bug.frames().get(i)));
        }
        sb.append("],\"step\":").append(step);
        sb.append(",\"screen\":").append(Report.jsonString(screen()));
        sb.append(",\"screenshot\":").append(Report.jsonString(screenshot()));
        sb.append(",\"foundAt\":").append(foundAt == null ? "null" : Report.jsonString(foundAt.toString()));
        return sb.append('}').toString();
    }
}
