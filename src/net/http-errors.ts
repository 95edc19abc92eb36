/**
 * What a failed outbound HTTP call means, decided in one place for APK origins, device agents and
 * report sinks. Two questions:
 * - a request that threw: refused by the URL policy (permanent, named for what the caller was
 *   doing), cancelled by the activity (rethrown as the cancellation), a project error (kept), or a
 *   transport failure (reset, timeout, DNS, TLS; classified by undici's stable `err.code`, never by
 *   instanceof) that the caller's retryable error reports;
 * - a status: 2xx success; a 3xx handed back once the redirect limit is reached; 404/410 not
 *   found; 408, 429 and 5xx transient, so retried; any other 4xx refused for good.
 * APK origins (cache and direct delivery) take these status verdicts as they are. Device agents and
 * report sinks take only the thrown-request mapping and the 2xx test from here: an agent maps the
 * other statuses by its protocol (device-agent.ts; a status it does not know, 401 included, is a
 * retryable AgentUnavailable), and a sink retries every failed status as ReportUploadError
 * (report-store.ts).
 */
import { ApkDownloadError, ApkFetchRejectedError, ApkNotFoundError, TraversalError } from '../contract/errors';
import { MAX_REDIRECTS, refusedFor, UrlRefusedError } from './url-policy';

/** What a status means to a client that asked for a resource. */
export type StatusVerdict = 'success' | 'too-many-redirects' | 'not-found' | 'transient' | 'rejected';

/** The verdict on one HTTP status. */
export function statusVerdict(status: number): StatusVerdict {
  if (status >= 200 && status < 300) return 'success';
  // The redirect interceptor hands back the last 3xx once its limit is reached.
  if (status >= 300 && status < 400) return 'too-many-redirects';
  if (status === 404 || status === 410) return 'not-found';
  if (status === 408 || status === 429 || status >= 500) return 'transient';
  return 'rejected';
}

/**
 * The error for an APK origin's answer that the caller does not accept. A 2xx the caller cannot use
 * (a 204 to a download) is refused for good like another 4xx.
 */
export function apkStatusError(url: string, status: number): TraversalError {
  switch (statusVerdict(status)) {
    case 'too-many-redirects':
      return new UrlRefusedError(`APK URL ${url}`, `more than ${MAX_REDIRECTS} redirects (last HTTP ${status})`);
    case 'not-found':
      return new ApkNotFoundError(url, status);
    case 'transient':
      return new ApkDownloadError(url, `HTTP ${status}`);
    default:
      return new ApkFetchRejectedError(url, status);
  }
}

/** The other end of a call, as its failures name it. */
export interface HttpTarget {
  /** How a refusal names it: `APK URL …`, `device agent …`, `report sink …`. */
  name: string;
  /** The retryable error for a request that failed on the way; `reason` is undici's code and message. */
  unreachable(reason: string): Error;
}

/** The error to throw for what a request (or the reading of its body) threw. */
export function requestError(target: HttpTarget, err: unknown, signal?: AbortSignal): unknown {
  if (err instanceof UrlRefusedError) return refusedFor(target.name, err);
  if (err instanceof TraversalError) return err;
  if (signal?.aborted) return signal.reason ?? err;
  const e = err as { code?: string; message?: string } | undefined;
  return target.unreachable(e?.code ? `${e.code}: ${e.message ?? ''}` : String(e?.message ?? err));
}

/** requestError for an APK origin: transport failures become a retryable ApkDownloadError. */
export function apkRequestError(url: string, err: unknown, signal?: AbortSignal): unknown {
  return requestError(
    { name: `APK URL ${url}`, unreachable: (reason) => new ApkDownloadError(url, reason) },
    err,
    signal,
  );
}
