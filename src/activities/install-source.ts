/**
 * Where an agent installs an APK from. installApp decides it on the worker that runs it, and the
 * answer never goes into workflow history: in cache delivery it is a URL on this worker's artifact
 * server (signed, so it expires), which means nothing on another host or after a restart on a new
 * port; in direct delivery it is the origin URL.
 */
import { Context } from '@temporalio/activity';
import type { ApkCache, DownloadState } from '../apk-cache';
import type { Delivery } from '../contract/messages';

/** What installApp is told about the APK: facts that hold on any host. */
export interface ApkSource {
  /** The URL the task named; the APK is fetched from it when this host's cache lacks it. */
  originUrl: string;
  sha256?: string;
  delivery: Delivery;
}

/** The APK part of installApp's input: a source, or in inputs recorded before, the URL resolveApk built. */
export interface InstallApkRef {
  apk?: ApkSource;
  /** Recorded before only: ignored when this host can serve the APK itself. */
  url?: string;
  sha256?: string;
}

/** Dependencies of the install URL decision. */
export interface InstallSourceDeps {
  cache: ApkCache;
  /** This worker's artifact server URL for a cached APK (signed when the server has a token). */
  installUrlFor: (sha256: string) => string;
}

/** Options of one decision: the activity's cancellation, and progress of a fetch into the cache. */
export interface InstallUrlOptions {
  signal?: AbortSignal;
  onState?: (s: DownloadState) => void;
}

/** Decides the URL the agent installs from. */
export type InstallUrlOf = (ref: InstallApkRef, opts?: InstallUrlOptions) => Promise<string>;

/** The path of a URL: a signed install URL carries ?token=…, which stays out of comparisons and logs. */
const pathOf = (url: string) => url.split(/[?#]/)[0]!;

/** Builds the install URL decision of this worker; call it inside an activity (it logs through the SDK). */
export function installUrlResolver(deps: InstallSourceDeps): InstallUrlOf {
  const fromSource = async (src: ApkSource, opts: InstallUrlOptions): Promise<string> => {
    if (src.delivery === 'direct') return src.originUrl;
    // touch renews the blob's lease, so it is not evicted before the agent has fetched it.
    if (src.sha256 && (await deps.cache.touch(src.sha256))) return deps.installUrlFor(src.sha256);
    // Not on this host (installApp runs where it is scheduled, not where resolveApk ran): fetch it
    // here, deduplicated with any download of the same URL by this host's other workers.
    Context.current().log.info('APK not in this host cache; fetching it for the install', { sha256: src.sha256 });
    const apk = await deps.cache.resolve(src.originUrl, src.sha256, opts);
    return deps.installUrlFor(apk.sha256);
  };

  return async (ref, opts = {}) => {
    if (ref.apk) return fromSource(ref.apk, opts);
    const recorded = ref.url ?? '';
    const sha256 = ref.sha256;
    // A recorded URL that is not an artifact server's path for the APK is the origin's (direct delivery).
    if (!sha256 || !pathOf(recorded).endsWith(`/apk/${sha256}.apk`)) return recorded;
    if (await deps.cache.touch(sha256)) return deps.installUrlFor(sha256);
    // Such an input does not name the origin, so the recorded URL is the only lead left.
    Context.current().log.warn('APK not in this host cache; installing from the recorded URL', {
      url: pathOf(recorded),
    });
    return recorded;
  };
}
