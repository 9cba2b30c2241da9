//! The crate's top-level modules (`src/*.rs`, `src/*/mod.rs`) depend on
//! each other without a cycle, in the layers docs/ARCHITECTURE.md lists
//! ("Module layers").
//!
//! The graph is read from the source: every `crate::<module>` path (in
//! `use` declarations, grouped `crate::{a, b}` imports and paths in code)
//! and every `super::` chain that climbs to the crate root is an edge from
//! the module of the file it is written in. Comments, string and character
//! literals are blanked out before the search, so a doc link such as
//! [`crate::engine`] or a message naming a path is no dependency. Test code
//! is left out: a `#[cfg(test)] mod name { … }` block, and the file of a
//! `#[cfg(test)] mod name;` declaration with everything under it. Tests of
//! a lower module may drive a higher one (the checkpoint tests run a whole
//! `Pipeline`), and nothing depends on test code, so it cannot make shipped
//! code circular. The crate root (`lib.rs`) only declares modules: a
//! `crate::<name>` that names no top-level module is reported too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::support::repo;

/// One source file: its path relative to `src/` (with `/` separators) and
/// its text.
struct SourceFile {
    path: String,
    text: String,
}

/// Where an edge was seen first: `src/<path>:<line>`.
type Site = String;

/// The module graph: module → (module it uses → first place it does).
#[derive(Debug, Default)]
struct ModuleGraph {
    modules: BTreeSet<String>,
    edges: BTreeMap<String, BTreeMap<String, Site>>,
    /// `crate::<name>` paths whose name is no top-level module.
    root_items: Vec<(Site, String)>,
}

/// Every `.rs` file under `src/`, sorted by path.
fn read_sources(src: &Path) -> Vec<SourceFile> {
    let mut files = Vec::new();
    let mut directories = vec![src.to_path_buf()];
    while let Some(directory) = directories.pop() {
        for entry in std::fs::read_dir(&directory).unwrap_or_else(|e| panic!("{}: {e}", directory.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                directories.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let relative = path.strip_prefix(src).unwrap().to_string_lossy().replace('\\', "/");
                let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                files.push(SourceFile { path: relative, text });
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files
}

fn is_identifier_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `text` with comments and the contents of string and character literals
/// replaced by spaces (line breaks kept, so offsets and lines still match).
fn blank_comments_and_literals(text: &str) -> Vec<char> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = chars.clone();
    let blank = |out: &mut Vec<char>, from: usize, to: usize| {
        for c in &mut out[from..to.min(chars.len())] {
            if *c != '\n' {
                *c = ' ';
            }
        }
    };
    let starts_raw_string = |i: usize| -> Option<(usize, usize)> {
        // `r"…"`, `r#"…"#`, `br"…"`, `cr#"…"#`: (index of the quote, hashes).
        let previous_is_identifier = i > 0 && is_identifier_char(chars[i - 1]);
        if previous_is_identifier {
            return None;
        }
        let mut j = i;
        if matches!(chars.get(j), Some('b' | 'c')) {
            j += 1;
        }
        if chars.get(j) != Some(&'r') {
            return None;
        }
        j += 1;
        let hashes = chars[j..].iter().take_while(|c| **c == '#').count();
        (chars.get(j + hashes) == Some(&'"')).then_some((j + hashes, hashes))
    };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            let end = chars[i..].iter().position(|c| *c == '\n').map_or(chars.len(), |p| i + p);
            blank(&mut out, i, end);
            i = end;
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            let mut j = i;
            while j < chars.len() {
                if chars[j] == '/' && chars.get(j + 1) == Some(&'*') {
                    depth += 1;
                    j += 2;
                } else if chars[j] == '*' && chars.get(j + 1) == Some(&'/') {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
        } else if let Some((quote, hashes)) = starts_raw_string(i) {
            let closing: Vec<char> = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
            let mut j = quote + 1;
            while j < chars.len() && !chars[j..].starts_with(&closing) {
                j += 1;
            }
            let end = (j + closing.len()).min(chars.len());
            blank(&mut out, quote, end);
            i = end;
        } else if c == '"' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != '"' {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            blank(&mut out, i, j + 1);
            i = j + 1;
        } else if c == '\'' {
            // A character literal ('a', '\n', '\u{1F600}', '\''), else a
            // lifetime or a label, which is left alone.
            if next == Some('\\') {
                // The escaped character is at i + 2 (it may be a quote).
                let mut j = i + 3;
                while j < chars.len() && chars[j] != '\'' {
                    j += 1;
                }
                blank(&mut out, i, j + 1);
                i = j + 1;
            } else if chars.get(i + 2) == Some(&'\'') {
                blank(&mut out, i, i + 3);
                i += 3;
            } else {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Skips whitespace from `i`.
fn skip_space(code: &[char], mut i: usize) -> usize {
    while i < code.len() && code[i].is_whitespace() {
        i += 1;
    }
    i
}

/// The identifier starting at `i` (empty when there is none).
fn identifier_at(code: &[char], i: usize) -> String {
    code[i.min(code.len())..].iter().take_while(|c| is_identifier_char(**c)).collect()
}

/// After `#[cfg(test)]` at `i`: further attributes and a visibility are
/// skipped; returns the module's name and the index just after it when a
/// `mod` follows.
fn test_module_after(code: &[char], attribute: usize) -> Option<(String, usize)> {
    let mut i = skip_space(code, attribute + "#[cfg(test)]".len());
    while code.get(i) == Some(&'#') {
        let close = code[i..].iter().position(|c| *c == ']')?;
        i = skip_space(code, i + close + 1);
    }
    if identifier_at(code, i) == "pub" {
        i += 3;
        if code.get(i) == Some(&'(') {
            i += code[i..].iter().position(|c| *c == ')')? + 1;
        }
        i = skip_space(code, i);
    }
    if identifier_at(code, i) != "mod" {
        return None;
    }
    i = skip_space(code, i + 3);
    let name = identifier_at(code, i);
    (!name.is_empty()).then(|| (name.clone(), i + name.len()))
}

/// The positions of `needle` in `code`.
fn find_all(code: &[char], needle: &str) -> Vec<usize> {
    let needle: Vec<char> = needle.chars().collect();
    (0..code.len().saturating_sub(needle.len() - 1)).filter(|&i| code[i..].starts_with(&needle)).collect()
}

/// Blanks every `#[cfg(test)] mod name { … }` block of `code` and returns
/// the names of `#[cfg(test)] mod name;` declarations (test files).
fn remove_test_modules(code: &mut [char]) -> Vec<String> {
    let mut test_files = Vec::new();
    for attribute in find_all(code, "#[cfg(test)]") {
        let Some((name, after)) = test_module_after(code, attribute) else { continue };
        let i = skip_space(code, after);
        match code.get(i) {
            Some(';') => test_files.push(name),
            Some('{') => {
                let mut depth = 0usize;
                let mut j = i;
                while j < code.len() {
                    match code[j] {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
                let end = (j + 1).min(code.len());
                for c in &mut code[attribute..end] {
                    if *c != '\n' {
                        *c = ' ';
                    }
                }
            }
            _ => {}
        }
    }
    test_files
}

/// The names a path continues with at `i` (after `crate::` or the last
/// `super::`): one identifier, or each first identifier of a `{…}` group.
fn names_at(code: &[char], i: usize) -> Vec<(usize, String)> {
    let i = skip_space(code, i);
    if code.get(i) != Some(&'{') {
        let name = identifier_at(code, i);
        return if name.is_empty() { Vec::new() } else { vec![(i, name)] };
    }
    let mut names = Vec::new();
    let mut depth = 0usize;
    let mut expecting_name = true;
    let mut j = i;
    while j < code.len() {
        match code[j] {
            '{' => {
                depth += 1;
                expecting_name = depth == 1;
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => expecting_name = true,
            c if expecting_name && depth == 1 && is_identifier_char(c) => {
                let name = identifier_at(code, j);
                j += name.len();
                names.push((j - name.len(), name));
                expecting_name = false;
                continue;
            }
            _ => {}
        }
        j += 1;
    }
    names
}

/// The top-level module of a file (`engine.rs` → `engine`, `window/mod.rs`
/// and `window/x.rs` → `window`); `None` for the crate roots.
fn top_module(path: &str) -> Option<String> {
    if path == "lib.rs" || path == "main.rs" {
        return None;
    }
    let first = path.split('/').next().unwrap();
    Some(first.strip_suffix(".rs").unwrap_or(first).to_string())
}

/// How many `super::` lead from a file's module to the crate root:
/// `engine.rs`, `window/mod.rs` → 1; `window/partial.rs` → 2.
fn depth(path: &str) -> usize {
    let parts: Vec<&str> = path.split('/').collect();
    if parts.last() == Some(&"mod.rs") { parts.len() - 1 } else { parts.len() }
}

/// The module graph of `files` (paths relative to `src/`).
fn module_graph(files: &[SourceFile]) -> ModuleGraph {
    let mut graph = ModuleGraph::default();
    for file in files {
        let parts: Vec<&str> = file.path.split('/').collect();
        if parts.len() == 1 && file.path != "lib.rs" && file.path != "main.rs" {
            graph.modules.insert(file.path.trim_end_matches(".rs").to_string());
        } else if parts.len() == 2 && parts[1] == "mod.rs" {
            graph.modules.insert(parts[0].to_string());
        }
    }
    // Files of `#[cfg(test)] mod x;` declarations: `dir/x.rs`, `dir/x/…`.
    let mut test_prefixes: Vec<String> = Vec::new();
    let mut code_of: Vec<(&SourceFile, Vec<char>)> = Vec::new();
    for file in files {
        let mut code = blank_comments_and_literals(&file.text);
        let dir = match file.path.rsplit_once('/') {
            Some((dir, "mod.rs")) => format!("{dir}/"),
            Some((dir, name)) => format!("{dir}/{}/", name.trim_end_matches(".rs")),
            None if file.path == "lib.rs" || file.path == "main.rs" => String::new(),
            None => format!("{}/", file.path.trim_end_matches(".rs")),
        };
        for name in remove_test_modules(&mut code) {
            test_prefixes.push(format!("{dir}{name}.rs"));
            test_prefixes.push(format!("{dir}{name}/"));
        }
        code_of.push((file, code));
    }
    for (file, code) in code_of {
        if test_prefixes.iter().any(|prefix| file.path == *prefix || file.path.starts_with(prefix.as_str())) {
            continue;
        }
        let Some(from) = top_module(&file.path) else { continue };
        let line_of = |offset: usize| code[..offset].iter().filter(|c| **c == '\n').count() + 1;
        let mut references: Vec<(usize, String, bool)> = Vec::new();
        for start in find_all(&code, "crate::") {
            if start > 0 && (is_identifier_char(code[start - 1]) || code[start - 1] == ':') {
                continue;
            }
            for (at, name) in names_at(&code, start + "crate::".len()) {
                references.push((at, name, true));
            }
        }
        for start in find_all(&code, "super::") {
            if start > 0 && (is_identifier_char(code[start - 1]) || code[start - 1] == ':') {
                continue;
            }
            let mut climbs = 0;
            let mut i = start;
            while code[i..].starts_with(&['s', 'u', 'p', 'e', 'r', ':', ':']) {
                climbs += 1;
                i = skip_space(&code, i + "super::".len());
            }
            if climbs == depth(&file.path) {
                for (at, name) in names_at(&code, i) {
                    references.push((at, name, false));
                }
            }
        }
        for (at, name, from_crate) in references {
            let site = format!("src/{}:{}", file.path, line_of(at));
            if name == from || name == "self" {
                continue;
            }
            if graph.modules.contains(&name) {
                graph.edges.entry(from.clone()).or_default().entry(name).or_insert(site);
            } else if from_crate {
                graph.root_items.push((site, name));
            }
        }
    }
    graph
}

/// Every strongly connected component of more than one module, each as one
/// cycle through its smallest module written out with a site per edge:
/// `a → b (src/a.rs:3) → a (src/b.rs:7)`.
fn cycles(graph: &ModuleGraph) -> Vec<String> {
    // Tarjan's algorithm, iterative over the sorted modules.
    let modules: Vec<&String> = graph.modules.iter().collect();
    let index_of: BTreeMap<&String, usize> = modules.iter().enumerate().map(|(i, m)| (*m, i)).collect();
    let successors: Vec<Vec<usize>> = modules
        .iter()
        .map(|m| graph.edges.get(*m).map_or_else(Vec::new, |e| e.keys().map(|t| index_of[t]).collect()))
        .collect();
    let n = modules.len();
    let (mut index, mut low, mut on_stack) = (vec![usize::MAX; n], vec![0; n], vec![false; n]);
    let (mut stack, mut components, mut counter) = (Vec::new(), Vec::new(), 0);
    for root in 0..n {
        if index[root] != usize::MAX {
            continue;
        }
        let mut work = vec![(root, 0usize)];
        while let Some(&(v, next)) = work.last() {
            if next == 0 {
                index[v] = counter;
                low[v] = counter;
                counter += 1;
                stack.push(v);
                on_stack[v] = true;
            }
            if next < successors[v].len() {
                work.last_mut().unwrap().1 += 1;
                let w = successors[v][next];
                if index[w] == usize::MAX {
                    work.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == index[v] {
                let mut component = Vec::new();
                loop {
                    let w = stack.pop().unwrap();
                    on_stack[w] = false;
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    components.push(component);
                }
            }
        }
    }
    components
        .into_iter()
        .map(|component| {
            // Breadth-first from the smallest member back to itself, within
            // the component: the shortest cycle through it.
            let start = component[0];
            let mut previous: BTreeMap<usize, usize> = BTreeMap::new();
            let mut queue = std::collections::VecDeque::from([start]);
            'search: while let Some(v) = queue.pop_front() {
                for &w in &successors[v] {
                    if !component.contains(&w) || previous.contains_key(&w) {
                        continue;
                    }
                    previous.insert(w, v);
                    if w == start {
                        break 'search;
                    }
                    queue.push_back(w);
                }
            }
            let mut path = vec![start];
            let mut at = previous[&start];
            while at != start {
                path.push(at);
                at = previous[&at];
            }
            path.push(start);
            path.reverse();
            let mut text = modules[start].clone();
            for pair in path.windows(2) {
                let site = &graph.edges[modules[pair[0]]][modules[pair[1]]];
                text.push_str(&format!(" → {} ({site})", modules[pair[1]]));
            }
            let members: Vec<&str> = component.iter().map(|&i| modules[i].as_str()).collect();
            format!("{text}   [modules on cycles together: {}]", members.join(", "))
        })
        .collect()
}

/// The layers of "## Module layers" in docs/ARCHITECTURE.md, bottom-up:
/// per numbered item (`1. `, continued on indented lines), the
/// `backticked` names before its first ` — ` (what follows explains them).
fn documented_layers(architecture: &str) -> Vec<Vec<String>> {
    let section = architecture.split("## Module layers").nth(1).expect("docs/ARCHITECTURE.md has ## Module layers");
    let section = section.split("\n## ").next().unwrap();
    let mut items: Vec<String> = Vec::new();
    let mut in_item = false;
    for line in section.lines() {
        let numbered =
            line.split_once(". ").is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
        if numbered {
            items.push(line.to_string());
            in_item = true;
        } else if in_item && line.starts_with(' ') && !line.trim().is_empty() {
            items.last_mut().unwrap().push_str(line);
        } else {
            in_item = false;
        }
    }
    items
        .iter()
        .map(|item| {
            let names = item.split(" — ").next().unwrap();
            names.split('`').skip(1).step_by(2).map(str::to_string).collect()
        })
        .collect()
}

#[test]
fn the_top_level_modules_depend_on_each_other_without_a_cycle() {
    let graph = module_graph(&read_sources(&repo("src")));
    // The reading works: dependencies everyone knows of are found.
    for (from, to) in
        [("engine", "window"), ("decode", "model"), ("pipeline", "engine"), ("evaluate", "window_metrics")]
    {
        assert!(
            graph.edges.get(from).is_some_and(|e| e.contains_key(to)),
            "the module graph misses {from} → {to}: the source reading is broken ({:?})",
            graph.edges.get(from)
        );
    }
    assert!(
        graph.root_items.is_empty(),
        "lib.rs declares modules only; these paths name something else in the crate root: {:?}",
        graph.root_items
    );
    let found = cycles(&graph);
    assert!(
        found.is_empty(),
        "the top-level modules have dependency cycles; move what both sides share into a lower module \
         (docs/ARCHITECTURE.md, Module layers):\n{}",
        found.join("\n")
    );
}

#[test]
fn every_module_uses_only_its_own_and_lower_layers_as_documented() {
    let graph = module_graph(&read_sources(&repo("src")));
    let architecture = std::fs::read_to_string(repo("docs/ARCHITECTURE.md")).unwrap();
    let layers = documented_layers(&architecture);
    let mut layer_of: BTreeMap<&str, usize> = BTreeMap::new();
    let mut problems = Vec::new();
    for (number, layer) in layers.iter().enumerate() {
        for module in layer {
            if layer_of.insert(module, number + 1).is_some() {
                problems.push(format!("`{module}` is listed in two layers"));
            }
            if !graph.modules.contains(module) {
                problems.push(format!("`{module}` (layer {}) is no top-level module of src/", number + 1));
            }
        }
    }
    for module in &graph.modules {
        if !layer_of.contains_key(module.as_str()) {
            problems.push(format!("`{module}` is in no layer of docs/ARCHITECTURE.md's Module layers"));
        }
    }
    for (from, targets) in &graph.edges {
        for (to, site) in targets {
            if let (Some(a), Some(b)) = (layer_of.get(from.as_str()), layer_of.get(to.as_str()))
                && b > a
            {
                problems.push(format!("{from} (layer {a}) uses {to} (layer {b}, above it) at {site}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "Module layers (docs/ARCHITECTURE.md) and the code disagree:\n{}",
        problems.join("\n")
    );
}

fn source(path: &str, text: &str) -> SourceFile {
    SourceFile { path: path.to_string(), text: text.to_string() }
}

#[test]
fn a_cycle_is_reported_with_its_modules_and_a_line_per_edge() {
    let files = [
        source("lib.rs", "pub mod a;\npub mod b;\npub mod c;\npub mod d;\n"),
        source("a.rs", "//! A.\n\nuse crate::b::Thing;\n"),
        source("b/mod.rs", "mod inner;\n"),
        source("b/inner.rs", "fn f() {\n    let _ = crate::c::g();\n}\n"),
        source("c.rs", "use crate::{\n    a::X,\n    d::{self, Y},\n};\n"),
        source("d.rs", "pub fn h() {}\n"),
    ];
    let graph = module_graph(&files);
    let found = cycles(&graph);
    assert_eq!(
        found,
        ["a → b (src/a.rs:3) → c (src/b/inner.rs:2) → a (src/c.rs:2)   [modules on cycles together: a, b, c]"]
    );
    assert_eq!(graph.edges["c"].keys().collect::<Vec<_>>(), ["a", "d"]);
    assert!(!graph.edges.contains_key("d"));
}

#[test]
fn comments_literals_and_test_code_are_no_dependencies() {
    let files = [
        source("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n"),
        source("a.rs", "use crate::b::Thing;\n"),
        source(
            "b/mod.rs",
            concat!(
                "//! See [`crate::a`].\n",
                "/* crate::a /* nested */ crate::a */\n",
                "const S: &str = \"crate::a\";\n",
                "const R: &str = r#\"crate::a \" still \"#;\n",
                "const Q: char = '\"'; fn lifetime<'a>(x: &'a str) -> &'a str { x }\n",
                "#[cfg(test)]\n",
                "mod tests {\n    use crate::a;\n    fn f() { if true { crate::a::g() } }\n}\n",
                "#[cfg(test)]\n#[allow(dead_code)]\npub(crate) mod more_tests;\n",
                "mod inner;\n",
            ),
        ),
        source("b/more_tests.rs", "use crate::a::Anything;\n"),
        source("b/more_tests/deeper.rs", "use crate::a::Anything;\n"),
        source("b/inner.rs", "use super::super::c::Z;\nuse super::Sibling;\n"),
        source("c.rs", "fn g() { self::h(); super::super::a::f(); }\n"),
    ];
    let graph = module_graph(&files);
    let edges: Vec<(String, String, String)> = graph
        .edges
        .iter()
        .flat_map(|(from, to)| to.iter().map(move |(t, site)| (from.clone(), t.clone(), site.clone())))
        .collect();
    let expected = [("a", "b", "src/a.rs:1"), ("b", "c", "src/b/inner.rs:1")]
        .map(|(a, b, site)| (a.to_string(), b.to_string(), site.to_string()));
    assert_eq!(edges, expected);
    assert!(cycles(&graph).is_empty());
    // A `super::` path that climbs to the crate root is an edge like a
    // `crate::` one: here it closes a cycle.
    let closing = [source("lib.rs", ""), source("a.rs", "use crate::b::X;\n"), source("b.rs", "use super::a::Y;\n")];
    assert_eq!(
        cycles(&module_graph(&closing)),
        ["a → b (src/a.rs:1) → a (src/b.rs:1)   [modules on cycles together: a, b]"]
    );
}

#[test]
fn a_path_to_an_item_of_the_crate_root_is_reported() {
    let files = [source("lib.rs", "pub mod a;\npub fn helper() {}\n"), source("a.rs", "fn f() { crate::helper(); }\n")];
    assert_eq!(module_graph(&files).root_items, [("src/a.rs:1".to_string(), "helper".to_string())]);
}
