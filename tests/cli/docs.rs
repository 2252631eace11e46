//! The docs kept true by the code: the configuration reference is rendered from `config::KEYS`
//! and holds every key the parser accepts, and every relative link of the README and of the
//! book (`docs/src/`) leads to a file and a heading that exist.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crm_jobs::config::{self, Config, KEYS, SECTION_DOCS};
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `docs/src/reference/config.md` is `config::reference_markdown()`; `UPDATE_DOCS=1` writes it.
#[test]
fn the_config_reference_is_generated_from_the_code() {
    let path = root().join("docs/src/reference/config.md");
    let rendered = config::reference_markdown();
    if std::env::var_os("UPDATE_DOCS").is_some_and(|v| !v.is_empty()) {
        std::fs::write(&path, &rendered).unwrap();
        return;
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    if on_disk != rendered {
        let (line, (disk, code)) = on_disk
            .lines()
            .zip(rendered.lines())
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .unwrap_or((
                on_disk.lines().count().min(rendered.lines().count()),
                ("", ""),
            ));
        panic!(
            "docs/src/reference/config.md differs from the code at line {}: `{disk}` (file) vs `{code}` (code); \
             write it again with `UPDATE_DOCS=1 cargo test --test cli docs::`",
            line + 1
        );
    }
}

/// The keys the parser accepts, found by walking `Config`'s own `Deserialize`: each struct names
/// its fields, each table of entries gets one entry `*`.
#[test]
fn every_key_the_config_accepts_is_documented() {
    let seen = RefCell::new(BTreeMap::new());
    Config::deserialize(Walk {
        path: String::new(),
        seen: &seen,
    })
    .unwrap();
    let accepted: BTreeMap<String, &str> = seen.into_inner();
    let documented: BTreeMap<String, &str> = KEYS
        .iter()
        .map(|k| (dotted(k.section, k.key), basic_kind(k.kind)))
        .collect();
    assert_eq!(
        documented.len(),
        KEYS.len(),
        "a key is documented twice in config::KEYS"
    );
    let accepted_names: BTreeSet<&String> = accepted.keys().collect();
    let documented_names: BTreeSet<&String> = documented.keys().collect();
    assert_eq!(
        accepted_names
            .difference(&documented_names)
            .collect::<Vec<_>>(),
        Vec::<&&String>::new(),
        "keys the parser accepts that config::KEYS does not document"
    );
    assert_eq!(
        documented_names
            .difference(&accepted_names)
            .collect::<Vec<_>>(),
        Vec::<&&String>::new(),
        "keys config::KEYS documents that the parser does not accept"
    );
    for (name, kind) in &accepted {
        assert_eq!(documented[name], *kind, "the type of `{name}`");
    }

    // A default is shown exactly when the code has one: `unset` says what leaving out a key
    // without one means, and only for those.
    let defaults = toml::Table::try_from(Config::default()).unwrap();
    for k in KEYS {
        let mut table = Some(&defaults);
        for part in k.section.split('.') {
            table = table.and_then(|t| t.get(part)).and_then(|v| v.as_table());
        }
        let has_default = match table {
            Some(t) if k.key.starts_with('<') => !t.is_empty(),
            Some(t) => t.contains_key(k.key),
            None => false,
        };
        assert_eq!(
            has_default,
            k.unset.is_empty(),
            "`[{}] {}`: `unset` is for the keys without a default, and only for them",
            k.section,
            k.key
        );
    }

    // Every section is introduced once, and holds keys.
    let sections: Vec<&str> = SECTION_DOCS.iter().map(|(s, _)| *s).collect();
    let with_keys: BTreeSet<&str> = KEYS.iter().map(|k| k.section).collect();
    assert_eq!(
        sections.iter().copied().collect::<BTreeSet<_>>(),
        with_keys,
        "config::SECTION_DOCS and the sections of config::KEYS"
    );
    assert_eq!(
        sections.len(),
        with_keys.len(),
        "a section is introduced twice"
    );

    // Every plain key is in the commented example config, under its section.
    let example = std::fs::read_to_string(root().join("config.example.toml")).unwrap();
    for k in KEYS
        .iter()
        .filter(|k| !k.key.starts_with('<') && !k.section.contains('<'))
    {
        let header = format!("[{}]", k.section);
        let body = example
            .split_once(&format!("\n{header}\n"))
            .map(|(_, rest)| rest.split("\n[").next().unwrap_or(""))
            .unwrap_or_else(|| panic!("config.example.toml has no {header}"));
        let written = body.lines().any(|l| {
            l.trim_start_matches('#')
                .trim_start()
                .strip_prefix(k.key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        });
        assert!(written, "config.example.toml: {header} has no `{}`", k.key);
    }
}

/// `nio.fields.pix_code`, `crm.resources.*`, `schedule.*.cron`.
fn dotted(section: &str, key: &str) -> String {
    format!("{section}.{key}")
        .split('.')
        .map(|p| if p.starts_with('<') { "*" } else { p })
        .collect::<Vec<_>>()
        .join(".")
}

fn basic_kind(kind: &str) -> &'static str {
    match kind {
        "string" | "path" | "URL" | "address" => "string",
        "integer" => "integer",
        "boolean" => "boolean",
        "array of strings" => "array",
        other => panic!("unknown kind `{other}` in config::KEYS"),
    }
}

/// A deserializer that answers what each field asks for with an empty value and records the
/// type it asked for, by dotted path.
struct Walk<'a> {
    path: String,
    seen: &'a RefCell<BTreeMap<String, &'static str>>,
}

impl<'a> Walk<'a> {
    fn child(&self, name: &str) -> Walk<'a> {
        Walk {
            path: if self.path.is_empty() {
                name.to_string()
            } else {
                format!("{}.{name}", self.path)
            },
            seen: self.seen,
        }
    }

    fn leaf(&self, kind: &'static str) {
        self.seen.borrow_mut().insert(self.path.clone(), kind);
    }
}

type Error = de::value::Error;

macro_rules! unsigned {
    ($($name:ident)*) => {$(
        fn $name<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.leaf("integer");
            visitor.visit_u64(0)
        }
    )*};
}

macro_rules! signed {
    ($($name:ident)*) => {$(
        fn $name<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.leaf("integer");
            visitor.visit_i64(0)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for Walk<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
        panic!(
            "`{}` asks for any value: teach the walk its type",
            self.path
        )
    }

    unsigned!(deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64);
    signed!(deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64);

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.leaf("boolean");
        visitor.visit_bool(false)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.leaf("string");
        visitor.visit_str("")
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_some(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.leaf("array");
        visitor.visit_seq(Empty)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_map(Entries {
            fields: &["*"],
            walk: self,
            next: 0,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_map(Entries {
            fields,
            walk: self,
            next: 0,
        })
    }

    serde::forward_to_deserialize_any! {
        f32 f64 char bytes byte_buf unit unit_struct newtype_struct tuple tuple_struct
        identifier ignored_any i128 u128
    }

    /// A choice among words (`[smtp] tls`): a string in the file.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.leaf("string");
        visitor.visit_enum(IntoDeserializer::<Error>::into_deserializer(variants[0]))
    }
}

/// The fields of a struct (or the one entry `*` of a table), each answered by a [`Walk`].
struct Entries<'a> {
    fields: &'static [&'static str],
    walk: Walk<'a>,
    next: usize,
}

impl<'de> MapAccess<'de> for Entries<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match self.fields.get(self.next) {
            Some(name) => seed
                .deserialize(IntoDeserializer::<Error>::into_deserializer(*name))
                .map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let name = self.fields[self.next];
        self.next += 1;
        seed.deserialize(self.walk.child(name))
    }
}

struct Empty;

impl<'de> SeqAccess<'de> for Empty {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        _: T,
    ) -> Result<Option<T::Value>, Error> {
        Ok(None)
    }
}

/// Every relative link of the README and of the book leads to a file that exists, and its
/// `#anchor` to a heading of that file (as mdBook and GitHub name headings). Every page of the
/// book is in `SUMMARY.md` and linked from the README.
#[test]
fn every_relative_link_leads_somewhere() {
    let mut pages = vec![root().join("README.md")];
    collect_markdown(&root().join("docs/src"), &mut pages);
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = match target.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (target.as_str(), None),
            };
            let file = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file)
            };
            let name = page.strip_prefix(root()).unwrap().display().to_string();
            if !file.exists() {
                broken.push(format!("{name}: `{target}`: no such file"));
                continue;
            }
            if let Some(anchor) = anchor
                && file.extension().is_some_and(|e| e == "md")
                && !heading_ids(&std::fs::read_to_string(&file).unwrap()).contains(anchor)
            {
                broken.push(format!("{name}: `{target}`: no such heading"));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));

    let summary = std::fs::read_to_string(root().join("docs/src/SUMMARY.md")).unwrap();
    let in_summary: BTreeSet<String> = links(&summary).into_iter().collect();
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let from_readme: BTreeSet<String> = links(&readme).into_iter().collect();
    for page in pages.iter().skip(1) {
        let rel = page.strip_prefix(root().join("docs/src")).unwrap();
        let rel = rel.to_str().unwrap();
        if rel == "SUMMARY.md" {
            continue;
        }
        assert!(
            in_summary.contains(rel),
            "docs/src/{rel} is not in docs/src/SUMMARY.md"
        );
        assert!(
            from_readme.contains(&format!("docs/src/{rel}")),
            "docs/src/{rel} is not linked from README.md"
        );
    }
}

fn collect_markdown(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect_markdown(&path, out);
        } else if path.extension().is_some_and(|e| e == "md") {
            out.push(path);
        }
    }
}

/// The lines of a Markdown text outside fenced code blocks, with inline code spans blanked.
fn prose(text: &str) -> Vec<String> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push(line.to_string());
        }
    }
    out
}

/// Removes inline code spans (`` `x` ``, ``` `` x `` ```).
fn without_code(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        out.push_str(&rest[..start]);
        let ticks = rest[start..].chars().take_while(|c| *c == '`').count();
        let fence = "`".repeat(ticks);
        let after = &rest[start + ticks..];
        match after.find(&fence) {
            Some(end) => rest = &after[end + ticks..],
            None => {
                out.push_str(&rest[start..]);
                return out;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The targets of the inline links `[text](target)` of a Markdown text.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose(text) {
        let line = without_code(&line);
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            match after.find(')') {
                Some(end) => {
                    out.push(after[..end].trim().to_string());
                    rest = &after[end + 1..];
                }
                None => break,
            }
        }
    }
    out
}

/// The ids mdBook gives the headings of a page (GitHub's are the same for these pages):
/// the text, lower-cased, spaces as `-`, only letters, digits, `-` and `_` kept; a repeated id
/// gets `-1`, `-2`...
fn heading_ids(text: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for line in prose(text) {
        let Some(title) = line
            .strip_prefix('#')
            .map(|l| l.trim_start_matches('#'))
            .filter(|l| l.starts_with(' '))
        else {
            continue;
        };
        let id: String = title
            .trim()
            .chars()
            .filter_map(|c| {
                if c.is_alphanumeric() || c == '_' || c == '-' {
                    Some(c.to_ascii_lowercase())
                } else if c.is_whitespace() {
                    Some('-')
                } else {
                    None
                }
            })
            .collect();
        let n = count.entry(id.clone()).or_default();
        ids.insert(if *n == 0 { id } else { format!("{id}-{n}") });
        *n += 1;
    }
    ids
}
