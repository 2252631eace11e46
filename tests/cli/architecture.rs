//! Issue 16: the layers of `ARCHITECTURE.md` hold in the code. Every top-level module of `src/`
//! is in exactly one layer; a module imports only its own layer and those below; and there is no
//! import cycle at all.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The layer table: (layer number, modules), from the `layers` block of ARCHITECTURE.md.
fn layers(text: &str) -> BTreeMap<String, usize> {
    let block = text
        .split("```layers\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("ARCHITECTURE.md has a ```layers block");
    let mut out = BTreeMap::new();
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        let (head, modules) = line.split_once(':').expect("`N name: modules`");
        let n: usize = head.split_whitespace().next().unwrap().parse().unwrap();
        for m in modules.split_whitespace() {
            assert!(
                out.insert(m.to_string(), n).is_none(),
                "`{m}` is in two layers"
            );
        }
    }
    out
}

/// The code of a file without its comments and its `#[cfg(test)] mod tests`.
fn code_of(src: &str) -> String {
    let src = match src.find("#[cfg(test)]\nmod tests") {
        Some(i) => &src[..i],
        None => src,
    };
    src.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules a piece of code names: `crate::x`, `$crate::x`, `use crate::{x, y::z}`.
fn imports(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.trim()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in code.match_indices("crate::") {
        let before = code[..i].chars().last();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                let m = ident(item);
                if !m.is_empty() && m != "self" {
                    out.insert(m);
                }
            }
        } else {
            let m = ident(rest);
            if !m.is_empty() {
                out.insert(m);
            }
        }
    }
    out
}

/// Every top-level module of `src/` and the modules its files import.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap();
            let top = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string();
            let code = code_of(&std::fs::read_to_string(&path).unwrap());
            let found = imports(&code);
            let set = out.entry(top.clone()).or_default();
            set.extend(found.into_iter().filter(|m| *m != top));
        }
    }
    out
}

/// What is wrong with `graph` under `layers`: unlisted modules, upward imports, cycles.
fn violations(
    graph: &BTreeMap<String, BTreeSet<String>>,
    layers: &BTreeMap<String, usize>,
) -> Vec<String> {
    let mut out = Vec::new();
    for m in graph.keys() {
        if !layers.contains_key(m) {
            out.push(format!("`{m}` is in no layer of ARCHITECTURE.md"));
        }
    }
    for m in layers.keys() {
        if !graph.contains_key(m) {
            out.push(format!(
                "ARCHITECTURE.md lists `{m}`, which is not a module of src/"
            ));
        }
    }
    for (m, deps) in graph {
        let Some(&lm) = layers.get(m) else { continue };
        for d in deps {
            // A macro of the crate (`crate::outln!`) or an item of lib.rs is not a module.
            let Some(&ld) = layers.get(d) else { continue };
            if ld > lm {
                out.push(format!(
                    "`{m}` (layer {lm}) imports `{d}` (layer {ld}), a higher layer"
                ));
            }
        }
    }
    // Cycles: a depth-first search that reports the first path back to a module on the stack.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
        out: &mut Vec<String>,
    ) {
        state.insert(m.to_string(), 1);
        stack.push(m.to_string());
        for d in graph.get(m).into_iter().flatten() {
            if !graph.contains_key(d) {
                continue;
            }
            match state.get(d.as_str()).copied().unwrap_or(0) {
                0 => visit(d, graph, state, stack, out),
                1 => {
                    let from = stack.iter().position(|s| s == d).unwrap_or(0);
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(d.clone());
                    out.push(format!("import cycle: {}", cycle.join(" -> ")));
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(m.to_string(), 2);
    }
    let mut state = BTreeMap::new();
    for m in graph.keys() {
        if !state.contains_key(m.as_str()) {
            visit(m, graph, &mut state, &mut Vec::new(), &mut out);
        }
    }
    out
}

#[test]
fn no_layer_imports_a_higher_one_and_nothing_imports_in_a_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let table = layers(&std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap());
    let graph = graph(&root.join("src"));
    let wrong = violations(&graph, &table);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The check itself catches what it is for (an upward import, a cycle, an unlisted module).
#[test]
fn the_layer_check_sees_an_upward_import_and_a_cycle() {
    let table = layers("```layers\n0 low: a b\n1 high: c\n```\n");
    let code = "use crate::{c, b::x};\nfn f() { crate::a::g(); }\n// crate::zzz in a comment\n";
    assert_eq!(
        imports(&code_of(code)),
        ["a", "b", "c"].map(String::from).into()
    );
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.insert("a".into(), ["c".to_string()].into());
    g.insert("b".into(), ["a".to_string()].into());
    g.insert("c".into(), ["b".to_string()].into());
    g.insert("d".into(), BTreeSet::new());
    let wrong = violations(&g, &table);
    assert!(
        wrong
            .iter()
            .any(|w| w.contains("`a` (layer 0) imports `c` (layer 1)")),
        "{wrong:?}"
    );
    assert!(
        wrong
            .iter()
            .any(|w| w.starts_with("import cycle: a -> c -> b -> a")),
        "{wrong:?}"
    );
    assert!(
        wrong.iter().any(|w| w.contains("`d` is in no layer")),
        "{wrong:?}"
    );
}
