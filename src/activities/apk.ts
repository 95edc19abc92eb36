/** The resolveApk activity: APK into the host cache (deduped), and the URL the agent should install from. */
import { Context } from '@temporalio/activity';
import { request, type Dispatcher } from 'undici';
import type { Delivery } from '../contract/messages';
import { apkRequestError, apkStatusError, statusVerdict } from '../net/http-errors';
import type { ApkCache, DownloadState } from '../apk-cache';

/** Dependencies of resolveApk. */
export interface ApkActivityDeps {
  cache: ApkCache;
  dispatcher: Dispatcher;
  /** Base URL of this worker's artifact server, as agents reach it. */
  artifactBaseUrl: () => string;
  /** URL of a cached APK for agents (signed when the artifact server has a token); default <base>/apk/<sha256>.apk. */
  installUrlFor?: (sha256: string) => string;
  /** Default delivery mode when the request does not choose. */
  delivery: Delivery;
}

/** Input of resolveApk. */
export interface ResolveApkInput {
  url: string;
  sha256?: string;
  delivery?: Delivery;
}

/** A resolved APK and where the agent installs it from. */
export interface ResolvedApk {
  sha256?: string;
  size?: number;
  installUrl: string;
  fromCache: boolean;
  downloadedBytes: number;
  resumedFrom?: number;
  delivery: Delivery;
}

/** Builds the resolveApk activity. */
export function createApkActivities(deps: ApkActivityDeps) {
  return {
    /**
     * Makes the APK available to the agent. In `cache` mode: one streamed origin download per host
     * into the content-addressed cache, resumed from a partial file after a crash, heartbeating
     * bytes done. In `direct` mode: only checks the origin has it and hands its URL on.
     */
    async resolveApk(input: ResolveApkInput): Promise<ResolvedApk> {
      const ctx = Context.current();
      const delivery = input.delivery ?? deps.delivery;
      if (delivery === 'direct') {
        const res = await request(input.url, { method: 'HEAD', dispatcher: deps.dispatcher, signal: ctx.cancellationSignal }).catch(
          (err: unknown) => {
            throw apkRequestError(input.url, err, ctx.cancellationSignal);
          },
        );
        await res.body.dump();
        if (statusVerdict(res.statusCode) !== 'success') throw apkStatusError(input.url, res.statusCode);
        const size = Number(res.headers['content-length']);
        return {
          sha256: input.sha256,
          size: Number.isFinite(size) ? size : undefined,
          installUrl: input.url,
          fromCache: false,
          downloadedBytes: 0,
          delivery,
        };
      }
      const onState = (s: DownloadState) => ctx.heartbeat({ bytes: s.bytes, total: s.total, phase: s.phase });
      const apk = await deps.cache.resolve(input.url, input.sha256, { signal: ctx.cancellationSignal, onState });
      ctx.log.info('APK ready', { sha256: apk.sha256, size: apk.size, fromCache: apk.fromCache, downloadedBytes: apk.downloadedBytes });
      return {
        sha256: apk.sha256,
        size: apk.size,
        installUrl: deps.installUrlFor?.(apk.sha256) ?? `${deps.artifactBaseUrl()}/apk/${apk.sha256}.apk`,
        fromCache: apk.fromCache,
        downloadedBytes: apk.downloadedBytes,
        ...(apk.resumedFrom !== undefined ? { resumedFrom: apk.resumedFrom } : {}),
        delivery,
      };
    },
  };
}
