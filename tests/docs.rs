//! Suite docs: the documentation's links, its folder tree and the tests it names hold.
//!
//! | test | what it proves |
//! |---|---|
//! | [`every_relative_link_resolves`] | each relative link in `README.md`, `BENCHMARKS.md` and `docs/*.md` names a file or folder of the repository, and each `#anchor` a heading of its page |
//! | [`the_folder_tree_matches_the_repository`] | every path in the folder tree of `docs/architecture.md` exists, and every folder the repository tracks, to two levels, is in it |
//! | [`every_suite_file_is_a_test_target`] | every `tests/*.rs` but the library is a `[[test]]` of `tests/Cargo.toml` (which sets `autotests = false`), so no suite is silently never run |
//! | [`every_test_the_docs_name_exists`] | every test or module named as a Rust path (`suite::test`) in `SECURITY.md`, the README, `BENCHMARKS.md` and `docs/*.md` is one that a tracked Rust file defines with `fn` or `mod` |
//! | [`every_flag_of_the_cli_is_in_cli_md`] | every `--flag` that `cloudsmith-gen` and each of its commands print in `--help` is in `docs/cli.md`, and every one there is a flag the binary has |
//!
//! Links are read as GitHub renders them: outside code blocks and code spans, an anchor is
//! a heading's slug (lower case, punctuation dropped, spaces to `-`, `-1`, `-2`… for
//! repeats).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use testkit::process::expect_success;

/// The bound on `git ls-files` and `cloudsmith-gen --help`, which take well under a second.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The pages whose links are checked, relative to the root.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![PathBuf::from("README.md"), PathBuf::from("BENCHMARKS.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/ is readable")
        .map(|e| e.expect("a docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| p.strip_prefix(root()).expect("under the root").to_path_buf())
        .collect();
    docs.sort();
    assert!(!docs.is_empty(), "docs/ holds no page");
    pages.extend(docs);
    pages
}

/// The page's lines outside fenced code blocks, with their line numbers.
fn prose(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match fence {
            Some(f) if trimmed.starts_with(f) => fence = None,
            Some(_) => {}
            None if trimmed.starts_with("```") => fence = Some("```"),
            None if trimmed.starts_with("~~~") => fence = Some("~~~"),
            None => out.push((i + 1, line)),
        }
    }
    out
}

/// The line with code spans removed (a link inside backticks is text).
fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        out.push_str(&rest[..start]);
        let ticks = rest[start..].chars().take_while(|&c| c == '`').count();
        let fence = &rest[start..start + ticks];
        match rest[start + ticks..].find(fence) {
            Some(end) => rest = &rest[start + ticks + end + ticks..],
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The targets of the inline links and images on a line: `[text](target)`.
fn links(line: &str) -> Vec<String> {
    let line = without_code_spans(line);
    let mut out = Vec::new();
    let mut rest = line.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        match after.find(')') {
            Some(end) => {
                let target = after[..end].split_whitespace().next().unwrap_or("");
                out.push(target.to_string());
                rest = &after[end..];
            }
            None => break,
        }
    }
    out
}

/// A heading's anchor as GitHub makes it.
fn slug(heading: &str) -> String {
    let text = without_code_spans_keep_text(heading);
    text.trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// A heading's text as rendered: code spans keep their text, links their label.
fn without_code_spans_keep_text(heading: &str) -> String {
    let mut text = heading.replace('`', "");
    while let (Some(open), Some(mid)) = (text.find('['), text.find("](")) {
        let Some(close) = text[mid..].find(')').map(|c| mid + c) else {
            break;
        };
        if open > mid {
            break;
        }
        text = format!("{}{}{}", &text[..open], &text[open + 1..mid], &text[close + 1..]);
    }
    text
}

/// The anchors of a page: its headings' slugs, repeats numbered.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for (_, line) in prose(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if hashes == 0 || hashes > 6 || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(&line[hashes + 1..]);
        let n = seen.entry(base.clone()).or_insert(0);
        out.insert(if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        *n += 1;
    }
    out
}

/// `path` joined to `base` without leaving the repository, or why not.
fn resolve(base: &Path, target: &str) -> Result<PathBuf, String> {
    let mut out = base.to_path_buf();
    for part in Path::new(target).components() {
        match part {
            Component::ParentDir => {
                if !out.pop() {
                    return Err("leaves the repository".into());
                }
            }
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return Err("is absolute".into()),
        }
    }
    Ok(out)
}

#[test]
fn every_relative_link_resolves() {
    let root = root();
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(root.join(&page)).expect("the page is readable");
        let dir = page.parent().unwrap_or(Path::new("")).to_path_buf();
        for (number, line) in prose(&text) {
            for target in links(line) {
                if target.contains("://") || target.starts_with("mailto:") || target.is_empty() {
                    continue;
                }
                checked += 1;
                let (path, anchor) = match target.split_once('#') {
                    Some((p, a)) => (p, Some(a)),
                    None => (target.as_str(), None),
                };
                let file = if path.is_empty() {
                    page.clone()
                } else {
                    match resolve(&dir, path) {
                        Ok(f) => f,
                        Err(why) => {
                            broken.push(format!("{}:{number}: {target} {why}", page.display()));
                            continue;
                        }
                    }
                };
                if !root.join(&file).exists() {
                    broken.push(format!(
                        "{}:{number}: {target}: no such file or folder {}",
                        page.display(),
                        file.display()
                    ));
                    continue;
                }
                if let Some(anchor) = anchor {
                    let Ok(linked) = std::fs::read_to_string(root.join(&file)) else {
                        broken.push(format!(
                            "{}:{number}: {target}: an anchor on a folder",
                            page.display()
                        ));
                        continue;
                    };
                    if !anchors(&linked).contains(anchor) {
                        broken.push(format!(
                            "{}:{number}: {target}: {} has no heading whose anchor is #{anchor}",
                            page.display(),
                            file.display()
                        ));
                    }
                }
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} relative links found: is the parser reading the pages?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The paths the folder tree of docs/architecture.md names, and the folders among them.
fn tree() -> (Vec<PathBuf>, BTreeSet<PathBuf>) {
    let text = std::fs::read_to_string(root().join("docs/architecture.md")).expect("architecture.md");
    let section = text
        .split_once("## The folder tree")
        .expect("architecture.md has a section \"The folder tree\"")
        .1;
    let block = section
        .split_once("```text\n")
        .and_then(|(_, b)| b.split_once("\n```"))
        .expect("the folder tree is a ```text block")
        .0;
    let mut parents: Vec<PathBuf> = Vec::new();
    let mut paths = Vec::new();
    let mut folders = BTreeSet::new();
    for line in block.lines() {
        let indent = line.len() - line.trim_start().len();
        assert!(indent % 2 == 0, "odd indentation in the folder tree: {line:?}");
        let depth = indent / 2;
        assert!(
            depth <= parents.len(),
            "the folder tree skips a level at {line:?}"
        );
        parents.truncate(depth);
        let names = line.trim_start().split("  ").next().unwrap_or("").trim();
        let parent = parents.last().cloned().unwrap_or_default();
        let mut last_folder = None;
        for name in names.split(", ") {
            let path = parent.join(name.trim_end_matches('/'));
            if name.ends_with('/') {
                folders.insert(path.clone());
                last_folder = Some(path.clone());
            }
            paths.push(path);
        }
        if let Some(folder) = last_folder {
            parents.push(folder);
        } else {
            // A file line: its children (none) would sit under its parent.
            parents.push(parent.join("\0"));
        }
    }
    (paths, folders)
}

/// The files git tracks, relative to the root.
fn tracked_files() -> Vec<String> {
    let mut git = std::process::Command::new("git");
    git.args(["ls-files"]).current_dir(root());
    // Install git: the docs are checked against `git ls-files`.
    expect_success("git ls-files", git, RUN_TIMEOUT)
        .stdout
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn the_folder_tree_matches_the_repository() {
    let root = root();
    let (paths, folders) = tree();
    assert!(
        paths.len() > 30,
        "the folder tree names only {} paths",
        paths.len()
    );
    let missing: Vec<String> = paths
        .iter()
        .filter(|p| !root.join(p).exists())
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "the folder tree names paths that do not exist: {missing:?}"
    );

    let tracked: BTreeSet<PathBuf> = tracked_files()
        .iter()
        .flat_map(|file| {
            let parts: Vec<&str> = file.split('/').collect();
            // The folders that hold this file, to two levels.
            (1..parts.len().min(3)).map(move |n| parts[..n].iter().collect::<PathBuf>())
        })
        .collect();
    assert!(
        tracked.len() > 20,
        "git ls-files lists only {} folders",
        tracked.len()
    );
    let absent: Vec<String> = tracked
        .difference(&folders)
        .map(|p| format!("{}/", p.display()))
        .collect();
    assert!(
        absent.is_empty(),
        "folders missing from the folder tree in docs/architecture.md: {absent:?}"
    );
}

/// The long flags a `--help` text names (`--flag`), `--help` and `--version` aside.
fn flags_in(text: &str) -> BTreeSet<String> {
    let mut flags = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("--") {
        let start = i + at;
        let mut end = start + 2;
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'-') {
            end += 1;
        }
        let before_ok = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'-');
        let flag = &text[start..end];
        if before_ok && flag.len() > 3 && !flag.ends_with('-') && !["--help", "--version"].contains(&flag) {
            flags.insert(flag.to_string());
        }
        i = end.max(start + 2);
    }
    flags
}

/// `cloudsmith-gen ARGS --help`'s text.
fn help(args: &[&str]) -> String {
    let mut command = std::process::Command::new(testkit::tools::cloudsmith_gen());
    command.args(args).arg("--help");
    expect_success(&format!("{args:?} --help"), command, RUN_TIMEOUT).stdout
}

/// The long flags of the options lists of a `--help` text (its option sections, lines
/// `  -v, --flag …` or `      --flag …`), not those its prose names (the kubelet's own).
fn options_in(help: &str) -> BTreeSet<String> {
    // clap's option sections: `Options:` and each `help_heading`, a heading at the margin
    // ending in ':', up to the next line at the margin (`--help` puts blank lines between
    // options).
    let mut in_options = false;
    help.lines()
        .filter(|line| {
            if !line.is_empty() && !line.starts_with(' ') {
                in_options = line.ends_with(':') && !["Commands:", "Usage:"].contains(&line.trim_end());
                return false;
            }
            in_options
        })
        .filter_map(|line| {
            let line = line.trim_start();
            let line = match line.split_once(", ") {
                Some((short, rest)) if short.len() == 2 && short.starts_with('-') => rest,
                _ => line,
            };
            line.starts_with("--")
                .then(|| flags_in(line.split_whitespace().next()?).into_iter().next())?
        })
        .collect()
}

/// The commands `--help` lists under `Commands:` (`help` aside), with their own.
fn commands(prefix: &[&str]) -> Vec<Vec<String>> {
    let text = help(prefix);
    let mut found = Vec::new();
    let mut in_commands = false;
    for line in text.lines() {
        if line.trim_end() == "Commands:" {
            in_commands = true;
            continue;
        }
        if in_commands {
            if !line.starts_with("  ") {
                break;
            }
            let name = line.split_whitespace().next().unwrap_or_default();
            if name.is_empty() || name == "help" || line.starts_with("    ") {
                continue;
            }
            let mut command: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
            command.push(name.to_string());
            found.push(command);
        }
    }
    let mut all = Vec::new();
    for command in found {
        let refs: Vec<&str> = command.iter().map(String::as_str).collect();
        let nested = commands(&refs);
        all.push(command);
        all.extend(nested);
    }
    all
}

#[test]
fn every_flag_of_the_cli_is_in_cli_md() {
    let page = std::fs::read_to_string(root().join("docs/cli.md")).expect("docs/cli.md");
    // Every flag the page names in code, and the flags its tables document (a row's first
    // cell): other programs' flags (the kubelet's, kubectl's) may appear in prose only.
    let named: BTreeSet<String> = page.split('`').skip(1).step_by(2).flat_map(flags_in).collect();
    let documented: BTreeSet<String> = page
        .lines()
        .filter_map(|line| line.strip_prefix("| `--"))
        .flat_map(|cell| flags_in(&format!("--{}", cell.split(" |").next().unwrap_or_default())))
        .collect();
    let commands = commands(&[]);
    assert!(commands.len() >= 8, "too few commands found: {commands:?}");
    let mut binary = options_in(&help(&[]));
    let mut missing = Vec::new();
    for command in &commands {
        let refs: Vec<&str> = command.iter().map(String::as_str).collect();
        for flag in options_in(&help(&refs)) {
            if !named.contains(&flag) {
                missing.push(format!("{} {flag}", command.join(" ")));
            }
            binary.insert(flag);
        }
    }
    assert!(missing.is_empty(), "flags missing from docs/cli.md: {missing:?}");
    let stale: Vec<&String> = documented.iter().filter(|f| !binary.contains(*f)).collect();
    assert!(
        stale.is_empty(),
        "docs/cli.md documents flags the binary does not have: {stale:?}"
    );
    assert!(
        documented.len() >= 30,
        "too few documented flags read: {documented:?}"
    );
}

#[test]
fn every_suite_file_is_a_test_target() {
    let manifest = std::fs::read_to_string(root().join("tests/Cargo.toml")).expect("tests/Cargo.toml");
    // Each `path = "…"` of a [[test]] table, and the [lib] table's.
    let mut declared = BTreeSet::new();
    let mut lib = String::new();
    let mut table = "";
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            table = line;
        } else if let Some(path) = line.strip_prefix("path = ") {
            let path = path.trim_matches('"').to_string();
            match table {
                "[[test]]" => {
                    declared.insert(path);
                }
                "[lib]" => lib = path,
                _ => {}
            }
        }
    }
    let mut files: Vec<String> = std::fs::read_dir(root().join("tests"))
        .expect("tests/ is readable")
        .map(|e| {
            e.expect("a tests/ entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".rs") && *name != lib)
        .collect();
    files.sort();
    assert!(files.len() >= 10, "too few suites found: {files:?}");
    let undeclared: Vec<&String> = files.iter().filter(|f| !declared.contains(*f)).collect();
    assert!(
        undeclared.is_empty(),
        "tests/{undeclared:?} never run: add a [[test]] for each to tests/Cargo.toml"
    );
}

/// The code spans of `line` that read as a Rust path to a test or module:
/// `suite::test`, `oci::reference::tests::bad_references_are_named`.
fn rust_paths(line: &str) -> Vec<&str> {
    let segment = |s: &str| {
        s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    line.split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| span.contains("::") && span.split("::").all(segment))
        .collect()
}

/// Every name a tracked Rust file defines with `fn` or `mod`.
fn defined_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for file in tracked_files().iter().filter(|f| f.ends_with(".rs")) {
        let text = std::fs::read_to_string(root().join(file)).expect("a tracked .rs file");
        let mut words = text
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty());
        while let Some(word) = words.next() {
            if word == "fn" || word == "mod" {
                if let Some(name) = words.next() {
                    names.insert(name.to_string());
                }
            }
        }
    }
    names
}

#[test]
fn every_test_the_docs_name_exists() {
    let defined = defined_names();
    assert!(defined.len() > 500, "only {} names found", defined.len());
    let mut pages = pages();
    pages.push(PathBuf::from("SECURITY.md"));
    let mut named = 0;
    let mut missing = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(root().join(page)).expect("a page");
        for (number, line) in prose(&text) {
            for path in rust_paths(line) {
                // SECURITY.md's own key to how its tests are named.
                if path == "suite::test" {
                    continue;
                }
                named += 1;
                let name = path.rsplit("::").next().unwrap_or(path);
                if !defined.contains(name) {
                    missing.push(format!("{}:{number}: `{path}`", page.display()));
                }
            }
        }
    }
    assert!(named > 50, "the docs name only {named} tests");
    assert!(
        missing.is_empty(),
        "the docs name tests that no file defines (renamed or merged?):\n{}",
        missing.join("\n")
    );
}
