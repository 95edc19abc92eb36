/**
 * The worker's HTTP client for APK origins, device agents and report sinks, with the URL policy
 * (url-policy.ts) built into undici at two places:
 * - the connector resolves every host name through the policy and hands the socket only checked
 *   addresses, so nothing connects to an address the policy has not seen (no DNS rebinding);
 * - an interceptor below the redirect interceptor sees every request and every redirect hop,
 *   refuses a URL that fails the policy before any connection, and refuses a 3xx whose Location
 *   fails it (undici's redirect handler would throw its own error on file: or ftp: first).
 */
import { buildConnector, DecoratorHandler, interceptors, Agent, type Dispatcher } from 'undici';
import { MAX_REDIRECTS, UrlRefusedError, type UrlPolicy } from './url-policy';

/**
 * An undici connector that resolves through the policy. Scheme, metadata names and IP literals are
 * decided here (Node does not look IP literals up); names are resolved by the socket's `lookup`,
 * which hands Node only checked addresses, so the socket connects to what was checked and Node's
 * happy-eyeballs still picks among them. The original host name keeps driving the Host header, TLS
 * SNI and certificate checks.
 */
function policedConnector(policy: UrlPolicy, base: buildConnector.BuildOptions = {}): buildConnector.connector {
  const lookup = (hostname: string, options: { all?: boolean }, cb: (...args: unknown[]) => void): void => {
    policy.resolve('http:', hostname).then(
      (addresses) => (options?.all ? cb(null, addresses) : cb(null, addresses[0]!.address, addresses[0]!.family)),
      (err: Error) => cb(err),
    );
  };
  const inner = buildConnector({ ...base, lookup } as buildConnector.BuildOptions);
  return (opts, callback) => {
    if (!policy.decidesWithoutLookup(opts.protocol, opts.hostname)) return inner(opts, callback);
    policy.resolve(opts.protocol, opts.hostname).then(
      () => inner(opts, callback),
      (err: Error) => callback(err, null),
    );
  };
}

// undici's types declare DecoratorHandler without its methods, though it forwards every callback of
// a dispatch handler (lib/handler/decorator-handler.js); name the one overridden here so it can call super.
declare module 'undici/types/handlers' {
  interface DecoratorHandler {
    onResponseStart(
      controller: Dispatcher.DispatchController,
      statusCode: number,
      headers: Record<string, string | string[] | undefined>,
      statusMessage?: string,
    ): void;
  }
}

/**
 * Passes a response on unless it redirects to a URL the policy refuses; then the request is
 * aborted with that refusal, naming the hop.
 */
class PolicedRedirectHandler extends DecoratorHandler {
  constructor(
    private readonly policy: UrlPolicy,
    private readonly from: URL,
    handler: Dispatcher.DispatchHandler,
  ) {
    super(handler);
  }

  onResponseStart(
    controller: Dispatcher.DispatchController,
    statusCode: number,
    headers: Record<string, string | string[] | undefined>,
    statusMessage?: string,
  ): void {
    const location = headers.location;
    if (statusCode >= 300 && statusCode < 400 && typeof location === 'string') {
      let target = location;
      let refusal: string | undefined;
      try {
        const next = new URL(location, this.from);
        target = `${next.protocol}//${next.host}`;
        refusal = this.policy.precheck(next);
      } catch {
        refusal = 'not a valid URL';
      }
      if (refusal) {
        controller.abort(new UrlRefusedError(`redirect from ${this.from.origin} to ${target.slice(0, 200)}`, refusal));
        return;
      }
    }
    super.onResponseStart(controller, statusCode, headers, statusMessage);
  }
}

/** An interceptor refusing, before any connection, each request or redirect hop whose URL fails the policy. */
function policyInterceptor(policy: UrlPolicy): Dispatcher.DispatcherComposeInterceptor {
  return (dispatch) => (opts, handler) => {
    const origin = typeof opts.origin === 'string' ? opts.origin : opts.origin?.toString();
    let here: URL | undefined;
    let problem: string | undefined;
    try {
      here = new URL(opts.path ?? '/', origin);
      problem = policy.precheck(here);
    } catch {
      problem = 'not a valid URL';
    }
    if (problem || !here) {
      handler.onResponseError?.(
        null as never,
        new UrlRefusedError(origin ?? '(no origin)', problem ?? 'not a valid URL'),
      );
      return true;
    }
    return dispatch(opts, new PolicedRedirectHandler(policy, here, handler));
  };
}

/**
 * Redirect interceptor plus the policy check on every hop. Compose after the Agent:
 * `agent.compose(...policedRedirects(policy))`.
 */
function policedRedirects(
  policy: UrlPolicy,
  maxRedirections = MAX_REDIRECTS,
): Dispatcher.DispatcherComposeInterceptor[] {
  return [policyInterceptor(policy), interceptors.redirect({ maxRedirections })];
}

/**
 * HTTP dispatcher for origins, agents and sinks: bounded connections, timeouts, a few redirects.
 * With a policy every connection (each redirect hop included) is resolved and checked by it; the
 * worker always passes one, only tests of other parts call this without.
 */
export function createDispatcher(policy?: UrlPolicy): Dispatcher {
  const agent = new Agent({
    connections: 64,
    ...(policy ? { connect: policedConnector(policy, { timeout: 10_000 }) } : { connectTimeout: 10_000 }),
    headersTimeout: 60_000,
    bodyTimeout: 60_000,
    keepAliveTimeout: 10_000,
  });
  return policy
    ? agent.compose(policedRedirects(policy))
    : agent.compose(interceptors.redirect({ maxRedirections: MAX_REDIRECTS }));
}
