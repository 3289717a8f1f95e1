//! The crate's layers, checked from its source: a module may use only modules of a lower layer,
//! so there is no import cycle and each layer can be read knowing only the ones below it.
//! The table is the one in `src/lib.rs` and `docs/ARCHITECTURE.md`.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

/// Bottom first. Modules on one line are peers: none may use another.
const LAYERS: &[&[&str]] = &[
    &["domain"],
    &["clock", "metrics", "signing", "telemetry"],
    &["config"],
    &["store"],
    &["ingest", "endpoints", "guard", "sink"],
    &["delivery"],
    &["monitor"],
    &["relay"],
    &["dashboard"],
    &["api"],
    &["app"],
    &["cli"],
];

/// Longest source file, in lines: past this a file holds more than one concern.
const MAX_LINES: usize = 1_000;

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn source_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        if path.is_dir() {
            source_files(&path, files);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/store/sqlite/queue.rs` → `store`); `None` for
/// the crate root and the binaries, which may use anything.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "main.rs" | "bin" => None,
        name => Some(name.trim_end_matches(".rs").to_owned()),
    }
}

/// Every top-level module named after `crate::` in `code`, including the heads of grouped
/// imports (`use crate::{a::X, b}` names `a` and `b`).
fn modules_used(code: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0usize;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        rest = &group[i..];
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_alphanumeric() || c == '_') => {
                        let name: String = group[i..]
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        used.insert(name);
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            used.insert(name);
        }
    }
    used
}

/// The code before the file's unit tests: tests may reach anywhere to set things up.
fn without_tests(code: &str) -> &str {
    code.find("\n#[cfg(test)]").map_or(code, |at| &code[..at])
}

#[test]
fn no_module_uses_one_of_its_own_layer_or_above() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    source_files(&src, &mut files);
    files.sort();
    let mut violations = Vec::new();
    let mut unplaced = BTreeSet::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let Some(own) = layer_of(&module) else {
            unplaced.insert(module);
            continue;
        };
        let code = fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for used in modules_used(without_tests(&code)) {
            if used == module || used == "self" || used == "super" {
                continue;
            }
            match layer_of(&used) {
                Some(layer) if layer < own => {}
                Some(_) => violations.push(format!(
                    "{} ({module}) uses `crate::{used}`, which is not below it",
                    file.strip_prefix(&src).unwrap_or(file).display()
                )),
                None => {
                    unplaced.insert(used);
                }
            }
        }
    }
    // Anything named after `crate::` that is no module (a re-export at the root) is fine;
    // a module missing from the table is not.
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|file| module_of(&src, file))
        .collect();
    let missing: Vec<_> = unplaced.intersection(&modules).collect();
    assert!(missing.is_empty(), "modules not in LAYERS: {missing:?}");
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_layer_check_sees_grouped_and_plain_paths() {
    let used = modules_used(
        "use crate::{\n    config::{Config, X},\n    domain::{self, A},\n};\nlet x = crate::store::open();",
    );
    let expected: BTreeSet<String> = ["config", "domain", "store"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(used, expected);
}

#[test]
fn no_source_file_holds_more_than_one_concern() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    source_files(&src, &mut files);
    let mut long: Vec<String> = files
        .iter()
        .filter_map(|file| {
            let lines = fs::read_to_string(file).ok()?.lines().count();
            (lines > MAX_LINES).then(|| format!("{}: {lines} lines", file.display()))
        })
        .collect();
    long.sort();
    assert!(
        long.is_empty(),
        "over {MAX_LINES} lines:\n{}",
        long.join("\n")
    );
}
