//! The README's reference cannot drift from the code.
//!
//! - "Configuration reference": a table whose first three columns name command-line
//!   flags, config file keys and environment variables. Every flag of `iostall --help`
//!   and of each subcommand's `--help`, every key the config file schema accepts (read
//!   from the serde schema of `FileConfig` itself, nested sections and aliases
//!   included), and every environment variable the code reads must have a row; every
//!   flag, key or variable in the table must exist.
//! - Metrics: every `iostall_*` metric and every `reason` label value the README names
//!   must be one `/metrics` serves, and every metric it serves must be named.
use std::{
    cell::RefCell,
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    rc::Rc,
};

use iostall::config::{CliOverrides, Config, FileConfig};
use iostall_tests::iostall_proc::iostall_binary;
use serde::{
    Deserialize,
    de::{self, IntoDeserializer, value::Error as DeError},
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn readme() -> String {
    std::fs::read_to_string(repo().join("README.md")).expect("README.md is readable")
}

/// The text of the section under `heading` (a `## ` heading), up to the next `## `.
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("README.md has no {heading:?} section"));
    let body = &text[start + heading.len() + 2..];
    let end = body.find("\n## ").unwrap_or(body.len());
    &body[..end]
}

/// `a.{b,c}.d` → `a.b.d`, `a.c.d` (one level of braces, as the README writes them).
fn expand_braces(s: &str) -> Vec<String> {
    let (Some(open), Some(close)) = (s.find('{'), s.find('}')) else {
        return vec![s.to_owned()];
    };
    s[open + 1..close]
        .split(',')
        .flat_map(|alt| expand_braces(&format!("{}{alt}{}", &s[..open], &s[close + 1..])))
        .collect()
}

/// The backticked snippets of a table cell.
fn snippets(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

/// What the reference table documents.
#[derive(Debug, Default)]
struct Reference {
    /// `--threshold-ms`, `-t`, `probe`, `probe --json`…
    flags: BTreeSet<String>,
    /// `otlp.traces.endpoint`…
    keys: BTreeSet<String>,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`…
    env: BTreeSet<String>,
}

/// Reads the table of the "Configuration reference" section: its columns are flag,
/// config key, environment variable, then free text.
fn reference(readme: &str) -> Reference {
    let text = section(readme, "## Configuration reference");
    let mut out = Reference::default();
    let mut rows = 0;
    for line in text.lines().filter(|l| l.starts_with('|')) {
        // No cell of the first four columns holds a `|` (escaped `\|` in the others).
        let line = line.replace("\\|", "/");
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // ["", flag, key, env, default, meaning, ""]
        assert!(
            cells.len() >= 5,
            "reference row with too few columns: {line}"
        );
        if cells[1] == "flag" || cells[1].starts_with("---") {
            continue;
        }
        rows += 1;
        for s in snippets(cells[1]) {
            // `-t`, `--threshold-ms MS`, `iostall probe`, `iostall probe --json`.
            let words: Vec<&str> = s.split_whitespace().collect();
            match words.as_slice() {
                ["iostall", sub] => out.flags.insert((*sub).to_owned()),
                ["iostall", sub, flag, ..] => out.flags.insert(format!("{sub} {flag}")),
                [flag, ..] if flag.starts_with('-') => out.flags.insert((*flag).to_owned()),
                _ => panic!("flag cell snippet {s:?} is neither a flag nor `iostall SUB`"),
            };
        }
        for s in snippets(cells[2]) {
            out.keys.extend(expand_braces(s));
        }
        for s in snippets(cells[3]) {
            out.env.extend(expand_braces(s));
        }
    }
    assert!(rows > 20, "the reference table has only {rows} rows");
    out
}

/// The flags (long and short) of one `--help` text, and its subcommands.
fn help_flags(help: &str) -> (BTreeSet<String>, Vec<String>) {
    let mut flags = BTreeSet::new();
    let mut commands = Vec::new();
    let mut in_commands = false;
    for line in help.lines() {
        if !line.starts_with(' ') {
            in_commands = line.starts_with("Commands:");
            continue;
        }
        let trimmed = line.trim_start();
        if in_commands && line.starts_with("  ") && !line.starts_with("   ") {
            if let Some(name) = trimmed.split_whitespace().next() {
                commands.push(name.to_owned());
            }
            continue;
        }
        // `  -t, --threshold-ms <MS>` or `      --config <PATH>` (option lines are
        // indented 2 or 6; descriptions deeper).
        let indent = line.len() - trimmed.len();
        if trimmed.starts_with('-') && indent <= 6 {
            for part in trimmed.split(',') {
                let flag = part.split_whitespace().next().unwrap_or_default();
                if flag.starts_with('-') {
                    flags.insert(flag.to_owned());
                }
            }
        }
    }
    // clap's own, on every command.
    flags.remove("-h");
    flags.remove("--help");
    commands.retain(|c| c != "help");
    (flags, commands)
}

fn run_help(args: &[&str]) -> String {
    let bin = iostall_binary().expect("iostall builds");
    let out = Command::new(bin)
        .args(args)
        .arg("--help")
        .output()
        .expect("iostall runs");
    assert!(out.status.success(), "iostall {args:?} --help failed");
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// Every flag of `iostall --help` and of each subcommand's help (`probe --json`).
fn cli_flags() -> BTreeSet<String> {
    let (mut all, commands) = help_flags(&run_help(&[]));
    assert!(all.contains("--threshold-ms"), "help not parsed: {all:?}");
    assert!(
        !commands.is_empty(),
        "no subcommand found in iostall --help"
    );
    for sub in commands {
        let (flags, _) = help_flags(&run_help(&[&sub]));
        all.extend(flags.into_iter().map(|f| format!("{sub} {f}")));
        all.insert(sub);
    }
    all
}

// ---- The config file schema, from serde itself -------------------------------------

/// What the walk saw.
#[derive(Default)]
struct Walk {
    /// Every leaf key path (`otlp.traces.endpoint`).
    keys: BTreeSet<String>,
    /// Key paths not to offer (aliases found to duplicate a field).
    skip: BTreeSet<String>,
    /// The last key path offered to a struct visitor.
    last_key: String,
}

/// A deserializer that answers every request with a valid value and offers every field
/// a struct declares, recording the key paths it is asked for.
#[derive(Clone)]
struct Probe {
    path: String,
    walk: Rc<RefCell<Walk>>,
}

impl Probe {
    fn leaf(&self) {
        self.walk.borrow_mut().keys.insert(self.path.clone());
    }
}

/// The fields of one struct, offered by their own names (the last path segment).
struct StructFields {
    probe: Probe,
    /// Full key paths.
    names: Vec<String>,
    next: usize,
    prefix_len: usize,
}

impl<'de> de::MapAccess<'de> for StructFields {
    type Error = DeError;
    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some(path) = self.names.get(self.next) else {
            return Ok(None);
        };
        self.probe.walk.borrow_mut().last_key = path.clone();
        seed.deserialize(path[self.prefix_len..].into_deserializer())
            .map(Some)
    }
    fn next_value_seed<V: de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, DeError> {
        let path = self.names[self.next].clone();
        self.next += 1;
        seed.deserialize(Probe {
            path,
            walk: self.probe.walk.clone(),
        })
    }
}

macro_rules! leaf {
    ($($method:ident => $visit:ident($($value:expr)?)),* $(,)?) => {$(
        fn $method<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            self.leaf();
            visitor.$visit($($value)?)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for Probe {
    type Error = DeError;

    leaf! {
        deserialize_bool => visit_bool(true),
        deserialize_i8 => visit_i64(1),
        deserialize_i16 => visit_i64(1),
        deserialize_i32 => visit_i64(1),
        deserialize_i64 => visit_i64(1),
        deserialize_u8 => visit_u64(1),
        deserialize_u16 => visit_u64(1),
        deserialize_u32 => visit_u64(1),
        deserialize_u64 => visit_u64(1),
        deserialize_f32 => visit_f64(1.0),
        deserialize_f64 => visit_f64(1.0),
        deserialize_char => visit_char('x'),
        deserialize_str => visit_str("auto"),
        deserialize_string => visit_str("auto"),
        // Untyped values (`kube.enabled` reads auto/on/off or a boolean).
        deserialize_any => visit_str("auto"),
        deserialize_bytes => visit_bytes(b"x"),
        deserialize_byte_buf => visit_bytes(b"x"),
        deserialize_unit => visit_unit(),
        deserialize_identifier => visit_str("x"),
        deserialize_ignored_any => visit_unit(),
    }

    fn deserialize_option<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_some(self)
    }
    fn deserialize_unit_struct<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }
    fn deserialize_newtype_struct<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }
    /// A list or a map (`outputs`, `otlp.headers`) is a leaf: offered empty.
    fn deserialize_seq<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.leaf();
        visitor.visit_seq(de::value::SeqDeserializer::<_, DeError>::new(
            std::iter::empty::<u8>(),
        ))
    }
    fn deserialize_tuple<V: de::Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }
    fn deserialize_tuple_struct<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }
    fn deserialize_map<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.leaf();
        visitor.visit_map(de::value::MapDeserializer::<_, DeError>::new(
            std::iter::empty::<(u8, u8)>(),
        ))
    }
    fn deserialize_struct<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let prefix = if self.path.is_empty() {
            String::new()
        } else {
            format!("{}.", self.path)
        };
        let names = {
            let walk = self.walk.borrow();
            fields
                .iter()
                .map(|f| format!("{prefix}{f}"))
                .filter(|p| !walk.skip.contains(p))
                .collect::<Vec<_>>()
        };
        let prefix_len = prefix.len();
        visitor.visit_map(StructFields {
            probe: self,
            names,
            next: 0,
            prefix_len,
        })
    }
    /// A unit-variant enum (`attach`, `otlp.protocol`): its first variant.
    fn deserialize_enum<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.leaf();
        visitor.visit_enum(variants[0].into_deserializer())
    }
}

/// Every key path the config file accepts, aliases included (`outputs`, `sinks`).
fn schema_keys() -> BTreeSet<String> {
    let walk = Rc::new(RefCell::new(Walk::default()));
    let mut aliases = BTreeSet::new();
    loop {
        walk.borrow_mut().keys.clear();
        let probe = Probe {
            path: String::new(),
            walk: walk.clone(),
        };
        match FileConfig::deserialize(probe) {
            Ok(_) => break,
            // An alias offered after its field: note it, and offer it no more.
            Err(e) if e.to_string().starts_with("duplicate field") => {
                let mut w = walk.borrow_mut();
                let key = w.last_key.clone();
                assert!(aliases.insert(key.clone()), "{key}: {e} twice");
                w.skip.insert(key);
            }
            Err(e) => panic!("walking FileConfig's schema: {e}"),
        }
    }
    let mut keys = walk.borrow().keys.clone();
    keys.extend(aliases);
    keys
}

// ---- Environment variables ----------------------------------------------------------

/// Every variable `Config::resolve` looks up (asked with nothing set, then as in a pod,
/// where the node name is looked up), and those read directly in the code
/// (`std::env::var("…")`: `IOSTALL_LOG`, `NODE_NAME` for the Resource).
fn env_vars() -> BTreeSet<String> {
    let asked = RefCell::new(BTreeSet::new());
    for in_pod in [false, true] {
        let env = |k: &str| {
            asked.borrow_mut().insert(k.to_owned());
            (in_pod && k == "KUBERNETES_SERVICE_HOST").then(|| "10.96.0.1".to_owned())
        };
        Config::resolve(&CliOverrides::default(), &FileConfig::default(), &env)
            .expect("the defaults resolve");
    }
    let mut vars = asked.into_inner();
    for file in rust_files(&repo().join("exporter/src")) {
        let text = std::fs::read_to_string(&file).expect("source is readable");
        for call in ["env::var(\"", "env::var_os(\""] {
            for (i, _) in text.match_indices(call) {
                let rest = &text[i + call.len()..];
                if let Some(end) = rest.find('"') {
                    vars.insert(rest[..end].to_owned());
                }
            }
        }
    }
    assert!(
        vars.contains("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        "{vars:?}"
    );
    assert!(vars.contains("IOSTALL_LOG"), "{vars:?}");
    vars
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)
        .expect("source dir is readable")
        .flatten()
    {
        let path = entry.path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// `documented` and `real` are the same set; else a message naming each difference.
fn compare(what: &str, documented: &BTreeSet<String>, real: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    for m in real.difference(documented) {
        problems.push(format!(
            "{what} `{m}` exists but the README does not name it"
        ));
    }
    for x in documented.difference(real) {
        problems.push(format!(
            "{what} `{x}` is named in the README but does not exist"
        ));
    }
    problems
}

#[test]
fn readme_reference_names_every_flag_key_and_variable_and_nothing_else() {
    let text = readme();
    let doc = reference(&text);
    let mut problems = compare("flag", &doc.flags, &cli_flags());
    problems.extend(compare("config key", &doc.keys, &schema_keys()));
    problems.extend(compare("environment variable", &doc.env, &env_vars()));
    assert!(
        problems.is_empty(),
        "README.md drifted:\n{}",
        problems.join("\n")
    );
}

#[test]
fn schema_walk_finds_nested_keys_and_aliases() {
    // The walk itself: it must see into sections and per-signal overrides.
    let keys = schema_keys();
    for k in [
        "threshold_ms",
        "outputs",
        "sinks",
        "otlp.headers",
        "otlp.traces.certificate",
        "kube.enabled",
        "startup.max_open",
    ] {
        assert!(keys.contains(k), "{k} not found: {keys:?}");
    }
    assert!(!keys.contains("otlp"), "sections are not leaves: {keys:?}");
    assert_eq!(
        expand_braces("otlp.{traces,logs}.endpoint"),
        ["otlp.traces.endpoint", "otlp.logs.endpoint"]
    );
}

// ---- Metrics ------------------------------------------------------------------------

#[test]
fn readme_metrics_are_the_ones_served() {
    let metrics = iostall::metrics::Metrics::new();
    metrics.set_filesystems(vec![iostall::coverage::RootFilesystem {
        root: "/var/lib/containerd".into(),
        owner: "containerd".into(),
        fstype: "xfs".into(),
        mount_point: "/".into(),
        source: "/dev/sda1".into(),
        traced: iostall::event::FsSet::default(),
    }]);
    // Served only where there is an AWS EBS volume.
    metrics.set_ebs(vec![iostall::ebs_nvme::EbsSample {
        device: (259, 0),
        volume_id: Some("vol-1".into()),
        stats: iostall::ebs_nvme::EbsStats::default(),
    }]);
    let served = metrics.render();
    let families: BTreeSet<String> = served
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    // (metric, label, value) of every served series.
    let mut labels = BTreeSet::new();
    for line in served.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, rest)) = line.split_once('{') else {
            continue;
        };
        let name = name.trim_end_matches("_bucket");
        for pair in rest.split('}').next().unwrap_or_default().split(',') {
            if let Some((k, v)) = pair.split_once('=') {
                labels.insert((
                    name.to_owned(),
                    k.to_owned(),
                    v.trim_matches('"').to_owned(),
                ));
            }
        }
    }
    let text = readme();
    let mut named = BTreeSet::new();
    let mut problems = Vec::new();
    for (i, _) in text.match_indices("iostall_") {
        let rest = &text[i..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let name = &rest[..end];
        named.insert(name.to_owned());
        // `name{reason="a|b"}`: each value must be served.
        let Some(spec) = rest[end..].strip_prefix('{') else {
            continue;
        };
        let spec = &spec[..spec.find('}').unwrap_or(spec.len())];
        for pair in spec.split(',') {
            let Some((k, vs)) = pair.split_once('=') else {
                continue;
            };
            // `a|b`, or `a\|b` inside a Markdown table.
            for v in vs.replace('\\', "").trim_matches('"').split('|') {
                if !labels.contains(&(name.to_owned(), k.to_owned(), v.to_owned())) {
                    problems.push(format!("README names {name}{{{k}=\"{v}\"}}, not served"));
                }
            }
        }
    }
    problems.extend(compare("metric", &named, &families));
    assert!(
        problems.is_empty(),
        "README.md drifted:\n{}",
        problems.join("\n")
    );
}
