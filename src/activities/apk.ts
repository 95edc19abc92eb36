/**
 * The resolveApk activity: the APK into the host cache (deduped), or in direct delivery a check
 * that the origin has it. Its result is recorded in workflow history, so it holds only facts that
 * are true on any host; installApp derives the install URL where it runs (install-source.ts).
 */
import { Context } from '@temporalio/activity';
import { request, type Dispatcher } from 'undici';
import type { Delivery } from '../contract/messages';
import { apkRequestError, apkStatusError, statusVerdict } from '../net/http-errors';
import type { ApkCache, DownloadState } from '../apk-cache';

/** Dependencies of resolveApk. */
export interface ApkActivityDeps {
  cache: ApkCache;
  dispatcher: Dispatcher;
  /** Default delivery mode when the request does not choose. */
  delivery: Delivery;
}

/** Input of resolveApk. */
export interface ResolveApkInput {
  url: string;
  sha256?: string;
  delivery?: Delivery;
}

/** A resolved APK: what holds on any host, never a URL of one worker's artifact server. */
export interface ResolvedApk {
  sha256?: string;
  size?: number;
  /** The URL the task named. */
  originUrl: string;
  /** Results recorded before only: the install URL resolveApk built then (installApp now derives its own). */
  installUrl?: string;
  fromCache: boolean;
  downloadedBytes: number;
  resumedFrom?: number;
  /** Of downloadedBytes, those fetched from peer hosts of the farm. */
  peerBytes?: number;
  /** The peer host the APK came from, when no byte came from the origin. */
  fromPeer?: string;
  delivery: Delivery;
}

/** Builds the resolveApk activity. */
export function createApkActivities(deps: ApkActivityDeps) {
  return {
    /**
     * Makes the APK available to the agent. In `cache` mode: one streamed origin download per host
     * into the content-addressed cache, resumed from a partial file after a crash, heartbeating
     * bytes done. In `direct` mode: only checks the origin has it.
     */
    async resolveApk(input: ResolveApkInput): Promise<ResolvedApk> {
      const ctx = Context.current();
      const delivery = input.delivery ?? deps.delivery;
      if (delivery === 'direct') {
        const res = await request(input.url, {
          method: 'HEAD',
          dispatcher: deps.dispatcher,
          signal: ctx.cancellationSignal,
        }).catch((err: unknown) => {
          throw apkRequestError(input.url, err, ctx.cancellationSignal);
        });
        await res.body.dump();
        if (statusVerdict(res.statusCode) !== 'success') throw apkStatusError(input.url, res.statusCode);
        const size = Number(res.headers['content-length']);
        return {
          sha256: input.sha256,
          size: Number.isFinite(size) ? size : undefined,
          originUrl: input.url,
          fromCache: false,
          downloadedBytes: 0,
          delivery,
        };
      }
      const onState = (s: DownloadState) => ctx.heartbeat({ bytes: s.bytes, total: s.total, phase: s.phase });
      const apk = await deps.cache.resolve(input.url, input.sha256, { signal: ctx.cancellationSignal, onState });
      ctx.log.info('APK ready', {
        sha256: apk.sha256,
        size: apk.size,
        fromCache: apk.fromCache,
        downloadedBytes: apk.downloadedBytes,
        ...(apk.peerBytes ? { peerBytes: apk.peerBytes, fromPeer: apk.fromPeer } : {}),
      });
      return {
        sha256: apk.sha256,
        size: apk.size,
        originUrl: input.url,
        fromCache: apk.fromCache,
        downloadedBytes: apk.downloadedBytes,
        ...(apk.resumedFrom !== undefined ? { resumedFrom: apk.resumedFrom } : {}),
        ...(apk.peerBytes ? { peerBytes: apk.peerBytes } : {}),
        ...(apk.fromPeer ? { fromPeer: apk.fromPeer } : {}),
        delivery,
      };
    },
  };
}
