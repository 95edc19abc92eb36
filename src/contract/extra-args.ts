/**
 * The allow-list of a task's `traversal.extraArgs` (DT_TRAVERSAL_EXTRA_ARGS). Extra arguments go
 * into the traversal tool's argv, so without a list any producer holds every option of the tool:
 * it can make it write a file where it likes (`--faults-once /etc/x`), fake a result
 * (`--crashes 1000000`), or, with a tool whose parser lets the last option win, point the run at
 * another device (`--device other`).
 *
 * Syntax: entries separated by commas, each one argument shape the tool accepts:
 *   --verbose          a flag, alone
 *   --seed <int>       an option whose value is the next argument (`--seed 5`)
 *   --seed=<int>       an option with its value attached (`--seed=5`); list both to allow both
 *   *                  any argument at all (only for producers trusted with the whole tool)
 * Value types: <int> (0-999999999), <int:MIN-MAX>, <word> (1-64 letters, digits, '.', '_' or '-',
 * not starting with '.' or '-', so never a path), <a|b|c> (one of these words), <any> (any value
 * not starting with '-': parsers disagree on whether `--note --x` gives --note a value or two
 * options, and the check must read argv as the tool does).
 * The empty list (the default) allows nothing.
 *
 * Whatever the list says, an argument never names an option of the command template
 * (DT_TRAVERSAL_COMMAND, DT_TRAVERSAL_RESUME_ARGS: `--device`, `--agent`, `--out`, …), nor a prefix
 * of a long one (`--dev`: getopt and argparse expand abbreviations), in any letter case; a list
 * entry that does is a start-up error. Short aliases of those options (`-d`) cannot be derived
 * from the template: with `*`, the tool's own parser must not have them.
 */

const MAX_INT_DIGITS = 9;
const OPTION_NAME = /^-{1,2}[A-Za-z0-9][A-Za-z0-9._-]*$/;
const WORD = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$/;
const INT = new RegExp(`^\\d{1,${MAX_INT_DIGITS}}$`);
const TYPES_HELP = '<int>, <int:MIN-MAX>, <word>, <a|b|c> or <any>';
/** Where the options a task may never give come from. */
const SOURCE = 'DT_TRAVERSAL_COMMAND, DT_TRAVERSAL_RESUME_ARGS';

/** A value rule of one entry: its spelling and its test. */
interface ValueRule {
  text: string;
  test(v: string): boolean;
}

/** One entry of the list. */
interface Entry {
  /** The entry as written (normalised), for messages. */
  text: string;
  name: string;
  /** How the value comes: none (a flag), the next argument, or attached with '='. */
  form: 'flag' | 'separate' | 'attached';
  value?: ValueRule;
}

function valueRule(type: string): ValueRule | undefined {
  const text = `<${type}>`;
  if (type === 'any') return { text, test: (v) => !v.startsWith('-') };
  if (type === 'word') return { text, test: (v) => WORD.test(v) };
  const range = /^int(?::(\d{1,9})-(\d{1,9}))?$/.exec(type);
  if (range) {
    const min = range[1] === undefined ? 0 : Number(range[1]);
    const max = range[2] === undefined ? 10 ** MAX_INT_DIGITS - 1 : Number(range[2]);
    if (min > max) return undefined;
    return { text, test: (v) => INT.test(v) && Number(v) >= min && Number(v) <= max };
  }
  const words = type.split('|');
  if (words.length > 1 && words.every((w) => WORD.test(w))) return { text, test: (v) => words.includes(v) };
  return undefined;
}

/** The options a command template sets itself: every argument that looks like an option, up to its '='. */
export function templateOptions(template: readonly string[]): string[] {
  const out = new Set<string>();
  for (const a of template) {
    const name = a.split('=')[0]!;
    if (OPTION_NAME.test(name)) out.add(name.toLowerCase());
  }
  return [...out];
}

/** A short, printable preview of an argument for a message. */
function preview(v: string): string {
  return v.length > 40 ? `${JSON.stringify(v.slice(0, 40)).slice(0, -1)}…"` : JSON.stringify(v);
}

/** The allow-list of extra arguments, with the options of the command template it never allows. */
export class ExtraArgsPolicy {
  private readonly entries: Entry[] = [];
  private readonly any: boolean;
  private readonly reserved: string[];

  /**
   * @param list DT_TRAVERSAL_EXTRA_ARGS (syntax in the file header)
   * @param template the command template and resume arguments; their options are never allowed
   * @throws Error naming the entry and the fix when the list is malformed
   */
  constructor(list: string, template: readonly string[]) {
    this.reserved = templateOptions(template);
    const texts = list
      .split(',')
      .map((e) => e.trim().replace(/\s+/g, ' '))
      .filter(Boolean);
    this.any = texts.includes('*');
    for (const [i, text] of texts.entries()) {
      const where = `entry ${i + 1} ${JSON.stringify(text)}`;
      if (text === '*') continue;
      const m = /^([^\s=<>]+)(?:( |=)<([^<>]*)>)?$/.exec(text);
      if (!m) throw new Error(`${where}: expected --name, --name <type> or --name=<type> (types ${TYPES_HELP}), or *`);
      const name = m[1]!;
      if (!OPTION_NAME.test(name)) throw new Error(`${where}: ${name} is not an option name like --seed or -v`);
      const clash = this.reservedBy(name);
      if (clash) throw new Error(`${where}: ${clash} is set by the runner itself (${SOURCE}); remove the entry`);
      if (m[3] === undefined) {
        this.entries.push({ text, name, form: 'flag' });
        continue;
      }
      const value = valueRule(m[3]);
      if (!value) throw new Error(`${where}: unknown value type <${m[3]}>; use ${TYPES_HELP}`);
      this.entries.push({ text, name, form: m[2] === '=' ? 'attached' : 'separate', value });
    }
  }

  /** The list as a reader should see it in a message. */
  describe(): string {
    const all = [...(this.any ? ['*'] : []), ...this.entries.map((e) => e.text)].join(', ') || 'none';
    return all.length > 200 ? `${all.slice(0, 200)}…` : all;
  }

  /** The template option an argument would set (itself, `--opt=value`, or a prefix of a long one), if any. */
  private reservedBy(arg: string): string | undefined {
    const name = arg.split('=')[0]!.toLowerCase();
    if (!/^-/.test(name)) return undefined;
    return this.reserved.find((r) => r === name || (name.startsWith('--') && name.length > 2 && r.startsWith(name)));
  }

  /**
   * The first rule the arguments break, as `traversal.extraArgs[i]: …`, or undefined when allowed.
   * Every argument is checked against the template's options, values included, because a tool
   * may read an unexpected value as an option.
   */
  check(args: readonly string[]): string | undefined {
    const at = (i: number) => `traversal.extraArgs[${i}]`;
    for (const [i, a] of args.entries()) {
      const clash = this.reservedBy(a);
      if (clash)
        return `${at(i)}: ${preview(a)} sets ${clash}, which the runner sets itself (${SOURCE}); a task can never give it`;
    }
    if (this.any) return undefined;
    for (let i = 0; i < args.length;) {
      const a = args[i]!;
      const eq = a.indexOf('=');
      const attached =
        eq > 0 ? this.entries.find((e) => e.form === 'attached' && e.name === a.slice(0, eq)) : undefined;
      if (attached) {
        if (!attached.value!.test(a.slice(eq + 1)))
          return `${at(i)}: ${preview(a)} has a value DT_TRAVERSAL_EXTRA_ARGS does not allow (allowed: ${attached.text})`;
        i++;
        continue;
      }
      const flag = this.entries.find((e) => e.form === 'flag' && e.name === a);
      const separate = this.entries.find((e) => e.form === 'separate' && e.name === a);
      if (separate) {
        const v = args[i + 1];
        if (v !== undefined && separate.value!.test(v)) {
          i += 2;
          continue;
        }
        if (!flag) {
          return v === undefined
            ? `${at(i)}: ${preview(a)} needs a value (DT_TRAVERSAL_EXTRA_ARGS allows ${separate.text})`
            : `${at(i + 1)}: ${preview(v)} is not a value DT_TRAVERSAL_EXTRA_ARGS allows for ${a} (allowed: ${separate.text})`;
        }
      }
      if (flag) {
        i++;
        continue;
      }
      return `${at(i)}: ${preview(a)} is not allowed by DT_TRAVERSAL_EXTRA_ARGS (allowed: ${this.describe()})`;
    }
    return undefined;
  }
}

/** The policy of a configuration: its allow-list against its own command template. */
export function extraArgsPolicyFor(config: {
  traversalExtraArgs: string;
  traversalCommand: readonly string[];
  traversalResumeArgs: readonly string[];
}): ExtraArgsPolicy {
  return new ExtraArgsPolicy(config.traversalExtraArgs, [...config.traversalCommand, ...config.traversalResumeArgs]);
}
