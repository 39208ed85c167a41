//! The README and the pages under `docs/`, checked like code: a command a
//! newcomer copies must work, and a link must lead somewhere.
//!
//! - Every fenced block names its language, and shell blocks are ```` ```sh ````
//!   (not `bash`, `shell` or `console`), so no command hides from this test.
//! - Every `sh` block runs here and must exit 0, unless its fence says
//!   ```` ```sh no-run ````: the test command itself (it would run this test
//!   again), and whatever needs a long-running daemon, Docker or a store that
//!   is not started here. Runnable blocks run in the workspace root under
//!   `bash -euo pipefail`, one at a time, each within [`BLOCK_TIMEOUT`].
//! - Every relative link points at a file that exists, and a link to a
//!   heading (`page.md#heading`) at a heading that exists, by GitHub's rule
//!   for heading anchors.
//!
//! The blocks find the binary under test as `pgfanout` on `PATH`. The quick
//! start (`scripts/demo.sh`) builds the release binary with `cargo build`
//! and runs `$CARGO_TARGET_DIR/release/pgfanout`; here `CARGO_TARGET_DIR`
//! holds the binary under test at that path and `cargo` on `PATH` answers
//! `build` without building (a release build takes minutes), so the script
//! itself runs as written: its own PostgreSQL, the daemon streaming
//! `config/demo.yaml`, the example's changes, a clean stop. The daemon's
//! HTTP listener is moved to a free port (`PGFANOUT__HTTP__LISTEN`), so that
//! a server on the default 9187 cannot make the quick start fail here.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The longest one runnable block may take.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(60);

/// Fence info words a shell block may carry after `sh`.
const NO_RUN: &str = "no-run";

/// Languages that would be shell blocks under another name.
const OTHER_SHELL_NAMES: &[&str] = &["bash", "shell", "console", "zsh", "shell-session", "sh-session"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every page under docs/, in a stable order.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = fs::read_dir(root().join("docs"))
        .expect("read docs/")
        .map(|e| e.expect("read docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

fn display(page: &Path) -> String {
    page.strip_prefix(root()).unwrap_or(page).display().to_string()
}

/// One fenced code block of a page.
struct Block {
    page: PathBuf,
    /// 1-based line of the opening fence.
    line: usize,
    /// The words after the backticks: language first, then flags.
    info: Vec<String>,
    body: String,
}

impl Block {
    fn at(&self) -> String {
        format!("{}:{}", display(&self.page), self.line)
    }
}

/// A page split into fenced blocks and the lines outside them (with their
/// 1-based numbers).
struct Page {
    blocks: Vec<Block>,
    prose: Vec<(usize, String)>,
}

fn parse(page: &Path) -> Page {
    let text = fs::read_to_string(page).unwrap_or_else(|e| panic!("read {}: {e}", page.display()));
    let mut blocks = Vec::new();
    let mut prose = Vec::new();
    // (fence line, indent, backtick count, info, body)
    let mut open: Option<(usize, usize, usize, Vec<String>, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let ticks = trimmed.chars().take_while(|&c| c == '`').count();
        match open.as_mut() {
            None if ticks >= 3 => {
                let info = trimmed[ticks..].split_whitespace().map(str::to_owned).collect();
                open = Some((i + 1, indent, ticks, info, String::new()));
            }
            None => prose.push((i + 1, line.to_owned())),
            Some((_, _, open_ticks, _, _)) if ticks >= *open_ticks && trimmed[ticks..].trim().is_empty() => {
                let (line, _, _, info, body) = open.take().expect("open fence");
                blocks.push(Block { page: page.to_owned(), line, info, body });
            }
            Some((_, fence_indent, _, _, body)) => {
                // Lines of a block inside a list item carry its indent.
                let cut = line.len() - line.trim_start().len();
                body.push_str(&line[cut.min(*fence_indent)..]);
                body.push('\n');
            }
        }
    }
    if let Some((line, ..)) = open {
        panic!("{}:{line}: a fence that is never closed", display(page));
    }
    Page { blocks, prose }
}

#[test]
fn every_block_names_its_language_and_sh_blocks_say_whether_they_run() {
    let mut problems = Vec::new();
    let mut sh = 0;
    for page in pages() {
        for b in parse(&page).blocks {
            let Some(lang) = b.info.first() else {
                problems.push(format!("{}: a fence without a language (```sh, ```text, ```yaml, ...)", b.at()));
                continue;
            };
            if OTHER_SHELL_NAMES.contains(&lang.as_str()) {
                problems.push(format!("{}: ```{lang}: shell blocks are ```sh (or ```sh {NO_RUN}), so that this test sees them", b.at()));
            }
            if lang == "sh" {
                sh += 1;
                for flag in &b.info[1..] {
                    if flag != NO_RUN {
                        problems.push(format!("{}: unknown fence flag {flag:?}: a sh block runs, or says ```sh {NO_RUN}", b.at()));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(sh > 0, "no sh block found in README.md or docs/");
}

/// `bin/` with `pgfanout` (the binary under test) and a `cargo` that only
/// answers `build`; `target/release/pgfanout` for `CARGO_TARGET_DIR`.
fn tool_dir(scratch: &Path) -> (PathBuf, PathBuf) {
    let exe = Path::new(env!("CARGO_BIN_EXE_pgfanout"));
    let bin = scratch.join("bin");
    let target = scratch.join("target");
    fs::create_dir_all(&bin).expect("mkdir bin");
    fs::create_dir_all(target.join("release")).expect("mkdir target/release");
    std::os::unix::fs::symlink(exe, bin.join("pgfanout")).expect("link pgfanout");
    std::os::unix::fs::symlink(exe, target.join("release/pgfanout")).expect("link release/pgfanout");
    let cargo = bin.join("cargo");
    fs::write(
        &cargo,
        "#!/bin/sh\n# tests/docs.rs: the binary under test is built already.\n\
         [ \"$1\" = build ] && exit 0\n\
         echo \"tests/docs.rs: only 'cargo build' is stubbed here, not: cargo $*\" >&2\nexit 1\n",
    )
    .expect("write cargo stub");
    fs::set_permissions(&cargo, fs::Permissions::from_mode(0o755)).expect("chmod cargo stub");
    (bin, target)
}

/// Runs one block; returns (exit ok, stdout, stderr, time taken).
fn run_block(b: &Block, bin: &Path, target: &Path, scratch: &Path) -> (bool, String, String, Duration) {
    let out_path = scratch.join("stdout");
    let err_path = scratch.join("stderr");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let start = Instant::now();
    let mut child = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &b.body])
        .current_dir(root())
        .env("PATH", path)
        .env("CARGO_TARGET_DIR", target)
        .env("PGFANOUT__HTTP__LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).expect("create stdout file"))
        .stderr(fs::File::create(&err_path).expect("create stderr file"))
        // Its own process group, so that a timeout stops what it started.
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("{}: start bash: {e}", b.at()));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for block") {
            break Some(status);
        }
        if start.elapsed() > BLOCK_TIMEOUT {
            let _ = Command::new("kill").args(["-KILL", &format!("-{}", child.id())]).status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = |p: &Path| fs::read_to_string(p).unwrap_or_default();
    let mut stderr = read(&err_path);
    if status.is_none() {
        stderr.push_str(&format!("\n(killed after {BLOCK_TIMEOUT:?})"));
    }
    (status.is_some_and(|s| s.success()), read(&out_path), stderr, start.elapsed())
}

#[test]
fn runnable_sh_blocks_exit_0() {
    let scratch = testkit::scratch_dir("pgfanout-docs-");
    let (bin, target) = tool_dir(scratch.path());
    let mut ran = 0;
    let mut failures = Vec::new();
    for page in pages() {
        for b in parse(&page).blocks {
            if b.info.first().map(String::as_str) != Some("sh") || b.info.iter().any(|f| f == NO_RUN) {
                continue;
            }
            ran += 1;
            let (ok, stdout, stderr, took) = run_block(&b, &bin, &target, scratch.path());
            eprintln!("{}: {} in {:.1}s", b.at(), if ok { "ok" } else { "FAILED" }, took.as_secs_f64());
            if !ok {
                failures.push(format!("{}: failed:\n{}--- stdout ---\n{stdout}--- stderr ---\n{stderr}", b.at(), b.body));
                continue;
            }
            // The quick start must have got to streaming: change records
            // of the example come out (not all are waited for: the script
            // gives them 2 s on a machine that may be busy).
            if b.body.contains("scripts/demo.sh") && !stdout.contains(r#""op":"insert""#) {
                failures.push(format!(
                    "{}: the quick start printed no change record:\n--- stdout ---\n{stdout}--- stderr ---\n{stderr}",
                    b.at()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(ran > 0, "no runnable sh block: the README's quick start at least runs here");
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces
/// as hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a page's headings (a repeated heading gets `-1`, `-2`, ...).
fn anchors(page: &Page) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (_, line) in &page.prose {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if hashes == 0 || hashes > 6 || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = anchor(&line[hashes..]);
        let n = seen.entry(base.clone()).or_insert(0);
        out.push(if *n == 0 { base.clone() } else { format!("{base}-{n}") });
        *n += 1;
    }
    out
}

/// Inline link targets of a line outside code spans: `[text](target)`.
fn link_targets(line: &str) -> Vec<String> {
    // Drop code spans first: `a](b)` inside backticks is not a link.
    let mut plain = String::new();
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
        } else if !in_code {
            plain.push(c);
        }
    }
    let mut targets = Vec::new();
    let mut rest = plain.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else { break };
        let target = after[..end].split_whitespace().next().unwrap_or("").to_owned();
        targets.push(target);
        rest = &after[end..];
    }
    targets
}

#[test]
fn relative_links_point_at_existing_files_and_headings() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let parsed = parse(&page);
        for (line, text) in &parsed.prose {
            for target in link_targets(text) {
                if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let (file, fragment) = match target.split_once('#') {
                    Some((f, a)) => (f, Some(a)),
                    None => (target.as_str(), None),
                };
                let dest = if file.is_empty() { page.clone() } else { page.parent().expect("page dir").join(file) };
                let at = format!("{}:{line}", display(&page));
                if !dest.exists() {
                    problems.push(format!("{at}: {target}: no such file {}", dest.display()));
                    continue;
                }
                let Some(fragment) = fragment else { continue };
                if dest.extension().is_none_or(|x| x != "md") {
                    continue;
                }
                if !anchors(&parse(&dest)).iter().any(|a| a == fragment) {
                    problems.push(format!("{at}: {target}: no heading with the anchor #{fragment} in {}", display(&dest)));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(checked > 0, "no relative link found");
}

#[test]
fn anchors_follow_githubs_rule() {
    assert_eq!(anchor(" Read-your-writes: `/wait` and `pgfanout wait`"), "read-your-writes-wait-and-pgfanout-wait");
    assert_eq!(anchor(" Cassandra / ScyllaDB: the activity feed"), "cassandra--scylladb-the-activity-feed");
    assert_eq!(anchor(" 5. Sinks: idempotent writes"), "5-sinks-idempotent-writes");
    assert_eq!(anchor(" `source.postgres`"), "sourcepostgres");
    assert_eq!(anchor(" Kafka and the broker's ceiling"), "kafka-and-the-brokers-ceiling");
}
