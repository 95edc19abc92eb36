/**
 * Test double of a real phone: the grammar of its mini `sh`. Enough of mksh for what tools send through
 * `adb shell`: lists joined by `;`, `&&`, `||`, `&` and newlines, single and double quotes, backslash
 * escapes, `NAME=value` prefixes, and the redirections `>`, `>>`, `2>`, `2>&1`, `&>` and `<`.
 * No pipes, variables or globbing.
 */

/** Where one stream of a simple command goes. */
export interface Redirect {
  fd: 0 | 1 | 2 | 'both';
  /** Phone path, or '&1' for 2>&1. */
  target: string;
  append: boolean;
}

/** A simple command with the operator that joins it to the next one. */
export interface SimpleCommand {
  env: Record<string, string>;
  argv: string[];
  redirects: Redirect[];
  /** How the next command depends on this one; '&' runs this one in the background. */
  then: ';' | '&&' | '||' | '&';
}

type Token = { word: string } | { op: string };

/** Thrown for input the mini shell cannot parse; the message reads like mksh's. */
export class ShellSyntaxError extends Error {}

/** Splits a command line into simple commands. */
export function parseScript(src: string): SimpleCommand[] {
  const tokens = tokenize(src);
  const out: SimpleCommand[] = [];
  let cur: SimpleCommand = { env: {}, argv: [], redirects: [], then: ';' };
  const flush = (then: SimpleCommand['then']): void => {
    if (cur.argv.length || Object.keys(cur.env).length) out.push({ ...cur, then });
    else if (then !== ';') throw new ShellSyntaxError(`syntax error: '${then}' unexpected`);
    cur = { env: {}, argv: [], redirects: [], then: ';' };
  };
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i] as Token;
    if ('op' in t) {
      if (t.op === ';' || t.op === '\n' || t.op === '&&' || t.op === '||' || t.op === '&') {
        flush(t.op === '\n' ? ';' : (t.op as SimpleCommand['then']));
        continue;
      }
      if (t.op === '2>&1') {
        cur.redirects.push({ fd: 2, target: '&1', append: false });
        continue;
      }
      const next = tokens[++i];
      if (!next || !('word' in next)) throw new ShellSyntaxError(`syntax error: '${t.op}' needs a file`);
      const append = t.op.endsWith('>>');
      const fd = t.op === '<' ? 0 : t.op.startsWith('2') ? 2 : t.op.startsWith('&') ? 'both' : 1;
      cur.redirects.push({ fd, target: next.word, append });
      continue;
    }
    const assign = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/s.exec(t.word);
    if (assign && !cur.argv.length) cur.env[assign[1] as string] = assign[2] as string;
    else cur.argv.push(t.word);
  }
  flush(';');
  return out;
}

function tokenize(src: string): Token[] {
  const tokens: Token[] = [];
  let word = '';
  let inWord = false;
  const end = (): void => {
    if (inWord) tokens.push({ word });
    word = '';
    inWord = false;
  };
  for (let i = 0; i < src.length; i++) {
    const c = src[i] as string;
    if (c === "'") {
      const close = src.indexOf("'", i + 1);
      if (close < 0) throw new ShellSyntaxError('syntax error: unterminated string');
      word += src.slice(i + 1, close);
      inWord = true;
      i = close;
    } else if (c === '"') {
      inWord = true;
      for (i++; ; i++) {
        if (i >= src.length) throw new ShellSyntaxError('syntax error: unterminated string');
        const d = src[i] as string;
        if (d === '"') break;
        if (d === '\\' && '"\\$`\n'.includes(src[i + 1] ?? '')) word += src[++i];
        else word += d;
      }
    } else if (c === '\\') {
      if (src[i + 1] !== '\n') word += src[i + 1] ?? '';
      inWord = true;
      i++;
    } else if (c === ' ' || c === '\t' || c === '\r') end();
    else if (c === '#' && !inWord) {
      while (i + 1 < src.length && src[i + 1] !== '\n') i++;
    } else if (c === '>' || c === '<') {
      // A lone "2" or "1" right before '>' names the descriptor, as in "2>/dev/null".
      const fd = inWord && (word === '2' || word === '1') && c === '>' ? word : '';
      if (fd) {
        word = '';
        inWord = false;
      } else end();
      let op = (fd === '2' ? '2' : '') + c;
      if (fd === '2' && src.startsWith('>&1', i)) {
        op = '2>&1';
        i += 2;
      } else if (c === '>' && src[i + 1] === '>') {
        op += '>';
        i++;
      }
      tokens.push({ op });
    } else if (c === '&' || c === '|' || c === ';' || c === '\n') {
      end();
      const two = src.slice(i, i + 2);
      let op: string = c;
      if (two === '&&' || two === '||') op = two;
      else if (two === '&>') op = src[i + 2] === '>' ? '&>>' : '&>';
      else if (c === '|') throw new ShellSyntaxError('syntax error: pipes are not supported by this fake phone');
      i += op.length - 1;
      tokens.push({ op });
    } else {
      word += c;
      inWord = true;
    }
  }
  end();
  return tokens;
}
