//! The documentation, checked against what ships: the README's quick start
//! run against the real binary, every `cordon` command line shown parsed,
//! every setting named in the docs a real one (and every setting
//! documented), every relative link resolving, and the error-code table
//! matching the codes in the code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::{CommandFactory, Parser};
use serde_json::Value;

use super::{SECRET, serve};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `README.md` and every file in `docs/`, with their text.
fn documents() -> Vec<(PathBuf, String)> {
    let mut paths = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/ exists")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    paths.extend(docs);
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("a readable document");
            (p, text)
        })
        .collect()
}

/// The fenced code blocks of `text` (their lines), and the text outside them.
fn split_code(text: &str) -> (Vec<Vec<String>>, String) {
    let (mut blocks, mut prose, mut current) = (Vec::new(), String::new(), None::<Vec<String>>);
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            match current.take() {
                Some(block) => blocks.push(block),
                None => current = Some(Vec::new()),
            }
            continue;
        }
        match &mut current {
            Some(block) => block.push(line.to_owned()),
            None => {
                prose.push_str(line);
                prose.push('\n');
            }
        }
    }
    (blocks, prose)
}

/// The lines of `block` with `\`-continued lines joined.
fn joined(block: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut pending = String::new();
    for line in block {
        match line.strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head);
                pending.push(' ');
            }
            None => {
                pending.push_str(line);
                out.push(std::mem::take(&mut pending));
            }
        }
    }
    out
}

/// The section of `text` under the heading `## title`, up to the next `## `.
fn section<'a>(text: &'a str, title: &str) -> &'a str {
    let start = text
        .find(&format!("\n## {title}\n"))
        .unwrap_or_else(|| panic!("a section `{title}`"));
    let rest = &text[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 4);
    &rest[..end]
}

/// Whether `actual` has the shape of `expected`: the same keys, values of
/// the same JSON types, and arrays empty or not alike (their first items
/// of the same shape).
fn same_shape(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            e.len() == a.len()
                && e.iter()
                    .all(|(k, v)| a.get(k).is_some_and(|w| same_shape(v, w)))
        }
        (Value::Array(e), Value::Array(a)) => match (e.first(), a.first()) {
            (None, None) => true,
            (Some(e), Some(a)) => same_shape(e, a),
            _ => false,
        },
        (Value::Number(_), Value::Number(_))
        | (Value::String(_), Value::String(_))
        | (Value::Bool(_), Value::Bool(_))
        | (Value::Null, Value::Null) => true,
        _ => false,
    }
}

/// Runs the README's quick start (its second block, as a user pastes it)
/// and its "Checking it yourself" block against a real server: each
/// command must succeed, and each output shown as `# {json}` must come
/// back with that shape.
#[test]
fn the_readmes_quick_start_runs_as_shown() {
    let data = tempfile::tempdir().expect("tempdir");
    let work = tempfile::tempdir().expect("tempdir");
    let server = serve(data.path());
    let address = server.base.trim_start_matches("http://").to_owned();
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let (quick, _) = split_code(section(&readme, "Quick start"));
    let (checking, _) = split_code(section(&readme, "Checking it yourself"));
    assert_eq!(quick.len(), 2, "the quick start has its two blocks");
    assert_eq!(
        quick[0],
        [
            "scripts/serve    # fetch the model, build, and serve on 127.0.0.1:8080 (embedded engine)",
            "scripts/test     # fetch the model, check formatting and lints, run every test",
        ],
        "the two commands of the quick start"
    );
    for name in ["scripts/serve", "scripts/test", "scripts/cordon"] {
        assert!(root().join(name).exists(), "{name} exists");
    }
    let lines: Vec<String> = joined(&quick[1])
        .into_iter()
        .chain(joined(&checking[0]))
        .collect();
    // Each command, and the output shown after it (if any).
    let mut steps: Vec<(String, Option<String>)> = Vec::new();
    for line in lines {
        let trimmed = line.trim();
        if let Some(shown) = trimmed.strip_prefix("# ")
            && shown.starts_with('{')
        {
            steps.last_mut().expect("an output follows a command").1 = Some(shown.to_owned());
        } else if !trimmed.is_empty() && !trimmed.starts_with('#') {
            steps.push((trimmed.to_owned(), None));
        }
    }
    let binary = env!("CARGO_BIN_EXE_cordon");
    let mut script = String::from("set -e\n");
    for (i, (command, _)) in steps.iter().enumerate() {
        let command = command
            .replace("localhost:8080", &address)
            .replace("scripts/cordon", binary);
        let command = if command.starts_with("export CORDON_JWT_HS256_SECRET=") {
            format!("export CORDON_JWT_HS256_SECRET={SECRET}")
        } else {
            command
        };
        script.push_str(&format!("{command}\necho; echo '<<<step {i}>>>'\n"));
    }
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(work.path())
        .env("CORDON_SERVER_SECRET", super::SERVER_SECRET)
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the README's commands failed:\n{stdout}\n{stderr}"
    );
    let mut outputs = stdout.split("<<<step ");
    let before = outputs.next().unwrap_or_default();
    let mut printed = vec![before.trim().to_owned()];
    printed.extend(outputs.map(|o| {
        o.split_once(">>>")
            .map_or("", |(_, rest)| rest)
            .trim()
            .to_owned()
    }));
    for (i, (command, shown)) in steps.iter().enumerate() {
        let Some(shown) = shown else { continue };
        let Ok(expected) = serde_json::from_str::<Value>(shown) else {
            // An output shown cut short (`…`) is an illustration only.
            continue;
        };
        let actual: Value = serde_json::from_str(&printed[i])
            .unwrap_or_else(|e| panic!("`{command}` printed no JSON ({e}): {}", printed[i]));
        assert!(
            same_shape(&expected, &actual),
            "`{command}` printed {actual}, not the shape of {expected}"
        );
    }
    assert!(stderr.contains("cordon verify: signature OK"), "{stderr}");
}

/// The arguments of a `cordon` command line as a document shows it, up to
/// the first shell operator; variables and substitutions become `x`.
fn arguments(line: &str) -> Vec<String> {
    let mut args = Vec::new();
    for word in line.split_whitespace() {
        if ["|", ">", "<", ";", "&&", "||", "&", "#", ")"].contains(&word)
            || word.starts_with('>')
            || word.starts_with('#')
        {
            break;
        }
        let word = word.trim_matches(|c| c == '\'' || c == '"' || c == '`');
        let word = if word.contains('$') { "x" } else { word };
        let ends = word.ends_with(')');
        args.push(word.trim_end_matches(')').to_owned());
        if ends {
            break;
        }
    }
    args
}

/// Every `cordon ...` command line in the documents (code blocks, and
/// inline code in prose), each as the arguments after `cordon`.
fn cordon_commands() -> Vec<(String, Vec<String>)> {
    let mut found = Vec::new();
    for (path, text) in documents() {
        let name = path
            .file_name()
            .expect("a file name")
            .to_string_lossy()
            .into_owned();
        let (blocks, prose) = split_code(&text);
        let mut candidates: Vec<String> = blocks.iter().flat_map(|b| joined(b)).collect();
        candidates.extend(prose.split('`').skip(1).step_by(2).map(str::to_owned));
        for line in candidates {
            let mut rest = line.as_str();
            while let Some(at) = rest.find("cordon ") {
                let before = &rest[..at];
                let after = &rest[at + "cordon ".len()..];
                rest = after;
                // A command: at the start, after `scripts/`, or after a
                // shell operator; not a word inside a sentence or a name.
                let word_start = before.is_empty()
                    || before.ends_with("scripts/")
                    || before.ends_with("$(")
                    || before.trim_end().ends_with('|')
                    || before.trim_end().ends_with("&&");
                let first = after.split_whitespace().next().unwrap_or_default();
                if word_start && first.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                    found.push((format!("{name}: cordon {after}"), arguments(after)));
                }
            }
        }
    }
    found
}

#[test]
fn every_cordon_command_line_in_the_docs_parses() {
    use clap::error::ErrorKind;
    let commands = cordon_commands();
    assert!(
        commands.len() > 20,
        "only {} command lines found",
        commands.len()
    );
    let mut refused = Vec::new();
    for (shown, args) in &commands {
        let argv = std::iter::once("cordon".to_owned()).chain(args.iter().cloned());
        if let Err(e) = cordon::cli::Cli::try_parse_from(argv) {
            // A mention of a command without its required arguments still
            // names a command that exists.
            let names_a_command = matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::MissingRequiredArgument
                    | ErrorKind::MissingSubcommand
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            );
            if !names_a_command {
                refused.push(format!("{shown}\n  {}", e.kind()));
            }
        }
    }
    assert!(
        refused.is_empty(),
        "command lines that do not parse:\n{}",
        refused.join("\n")
    );
}

/// Every environment variable a `cordon` command reads, with the paths of
/// the commands that read it.
fn settings_of(command: &clap::Command, path: &str, into: &mut BTreeMap<String, BTreeSet<String>>) {
    for arg in command.get_arguments() {
        if let Some(env) = arg.get_env() {
            into.entry(env.to_string_lossy().into_owned())
                .or_default()
                .insert(path.to_owned());
        }
    }
    for sub in command.get_subcommands() {
        settings_of(sub, &format!("{path} {}", sub.get_name()), into);
    }
}

/// The `CORDON_...` names in `text`.
fn named_settings(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("CORDON_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        // `CORDON_` alone is the prefix, not a setting.
        let name = tail[..end].trim_end_matches('_');
        if name.len() > "CORDON".len() {
            names.insert(name.to_owned());
        }
        rest = &tail[end..];
    }
    names
}

#[test]
fn every_setting_in_the_docs_exists_and_every_setting_is_documented() {
    let mut read = BTreeMap::new();
    settings_of(&cordon::cli::Cli::command(), "cordon", &mut read);
    // Read by the scripts and the test tools, not by a `cordon` command.
    let scripts = ["CORDON_SDK_VENV", "CORDON_BIN"];
    let mut unknown = Vec::new();
    for (path, text) in documents() {
        for name in named_settings(&text) {
            if !read.contains_key(&name) && !scripts.contains(&name.as_str()) {
                unknown.push(format!("{}: {name}", path.display()));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "settings no command reads:\n{}",
        unknown.join("\n")
    );
    let table = std::fs::read_to_string(root().join("docs/settings.md")).expect("docs/settings.md");
    let documented = named_settings(&table);
    let undocumented: Vec<&String> = read
        .iter()
        .filter(|(_, paths)| paths.contains("cordon serve"))
        .map(|(name, _)| name)
        .filter(|name| !documented.contains(*name))
        .collect();
    assert!(
        undocumented.is_empty(),
        "settings of `cordon serve` missing from docs/settings.md: {undocumented:?}"
    );
}

/// GitHub's anchor of a heading: lower case, punctuation but `-` and `_`
/// dropped, spaces as `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let (_, prose) = split_code(text);
    prose
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect()
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for (path, text) in documents() {
        let (_, prose) = split_code(&text);
        let dir = path.parent().expect("a directory");
        for piece in prose.split("](").skip(1) {
            let Some(target) = piece.split(')').next() else {
                continue;
            };
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, fragment) = target.split_once('#').unwrap_or((target, ""));
            let resolved: &Path = if file.is_empty() {
                &path
            } else {
                &dir.join(file)
            };
            let resolved = resolved.to_path_buf();
            if !resolved.exists() {
                broken.push(format!("{}: {target}", path.display()));
                continue;
            }
            if !fragment.is_empty() {
                let text = std::fs::read_to_string(&resolved).unwrap_or_default();
                if !anchors(&text).contains(fragment) {
                    broken.push(format!("{}: {target} (no such heading)", path.display()));
                }
            }
        }
    }
    assert!(checked > 20, "only {checked} links found");
    assert!(
        broken.is_empty(),
        "links that do not resolve:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_error_code_table_matches_the_code() {
    let mut codes: BTreeSet<(u16, String)> = cordon::error::ApiError::catalogue()
        .iter()
        .map(|e| {
            let (status, code) = e.status_and_code();
            (status, code.to_owned())
        })
        .collect();
    // Codes of bad requests raised outside the error module.
    let mut stack = vec![root().join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("src/ reads") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("a source file");
                for piece in text.split("code: \"").skip(1) {
                    if let Some(code) = piece.split('"').next() {
                        codes.insert((400, code.to_owned()));
                    }
                }
            }
        }
    }
    let table = std::fs::read_to_string(root().join("docs/troubleshooting.md"))
        .expect("docs/troubleshooting.md");
    let documented: BTreeSet<(u16, String)> = table
        .lines()
        .filter_map(|line| {
            let mut cells = line.split('|').map(str::trim).skip(1);
            let status = cells.next()?.parse::<u16>().ok()?;
            let code = cells.next()?.trim_matches('`').to_owned();
            Some((status, code))
        })
        .collect();
    let missing: Vec<_> = codes.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&codes).collect();
    assert!(
        missing.is_empty(),
        "codes the code answers that docs/troubleshooting.md lacks: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "codes in docs/troubleshooting.md the code never answers: {stale:?}"
    );
}
