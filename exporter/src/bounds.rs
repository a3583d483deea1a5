//! Bounds on what other programs hand iostall: label values, image names and ids come
//! from runtimes and the API server, file names from anyone who can create a file. A
//! megabyte label, ten thousand labels or a file name made of terminal escapes must not
//! grow iostall's memory, its OTLP requests or its JSON lines without bound, nor drive
//! an SRE's terminal. Values are cut (at a character boundary, marked with `…`) where
//! they enter; the table escapes control characters where it prints.
use std::{
    borrow::Cow,
    collections::BTreeMap,
    sync::atomic::{AtomicU64, Ordering},
};

/// Longest value kept (bytes): far above any real label (Kubernetes caps label values at
/// 63 characters, annotations' total at 256 KiB), far below what hurts a batch.
pub const MAX_VALUE_BYTES: usize = 4096;
/// Longest key kept (bytes): Kubernetes caps a label key at 253 + 1 + 63.
pub const MAX_KEY_BYTES: usize = 320;
/// Most labels or attributes kept per container or event (the first, in key order).
pub const MAX_ENTRIES: usize = 128;

/// Values cut and entries left out since start (`iostall_input_truncated_total`).
static TRUNCATED: AtomicU64 = AtomicU64::new(0);

/// How many values were cut or entries left out since start.
#[must_use]
pub fn truncated_total() -> u64 {
    TRUNCATED.load(Ordering::Relaxed)
}

/// Cuts `s` to at most `max` bytes (the mark included), at a character boundary.
/// Returns whether it was cut.
pub fn cut(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push('…');
    TRUNCATED.fetch_add(1, Ordering::Relaxed);
    true
}

/// Cuts an optional value to [`MAX_VALUE_BYTES`].
pub fn cut_opt(s: &mut Option<String>) -> bool {
    s.as_mut().is_some_and(|s| cut(s, MAX_VALUE_BYTES))
}

/// Bounds a map: at most [`MAX_ENTRIES`] entries, keys and values cut. Returns whether
/// anything was cut or left out.
pub fn bound_map(map: &mut BTreeMap<String, String>) -> bool {
    let oversized = map
        .iter()
        .any(|(k, v)| k.len() > MAX_KEY_BYTES || v.len() > MAX_VALUE_BYTES);
    let mut changed = false;
    if map.len() > MAX_ENTRIES {
        let extra = map.len() - MAX_ENTRIES;
        // BTreeMap keeps keys ordered: the first MAX_ENTRIES stay.
        let _ = map.split_off(&map.keys().nth(MAX_ENTRIES).cloned().unwrap_or_default());
        TRUNCATED.fetch_add(extra as u64, Ordering::Relaxed);
        changed = true;
    }
    if oversized {
        let old = std::mem::take(map);
        for (mut k, mut v) in old {
            cut(&mut k, MAX_KEY_BYTES);
            cut(&mut v, MAX_VALUE_BYTES);
            map.insert(k, v);
        }
        changed = true;
    }
    changed
}

/// `s` with every control character (C0, DEL, C1) and bidirectional override written as
/// a visible escape (`\x1b`, `\n`, `\u{202e}`), so that a file or label name cannot move
/// the cursor, recolour, retitle or reorder an SRE's terminal. Plain text is borrowed.
#[must_use]
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x100 && needs_escape(c) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// [`printable`] for a value already owned: plain text is returned as is, not copied.
#[must_use]
pub fn into_printable(s: String) -> String {
    match printable(&s) {
        Cow::Borrowed(_) => s,
        Cow::Owned(escaped) => escaped,
    }
}

/// Control characters, and the Unicode bidirectional controls ("Trojan Source").
fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_keeps_a_char_boundary_and_marks_the_cut() {
        let mut s = "é".repeat(5000);
        assert!(cut(&mut s, MAX_VALUE_BYTES));
        assert!(s.len() <= MAX_VALUE_BYTES);
        assert!(s.ends_with('…'));
        let mut short = "abc".to_owned();
        assert!(!cut(&mut short, 3));
        assert_eq!(short, "abc");
    }

    #[test]
    fn maps_are_bounded_in_entries_keys_and_values() {
        let mut m: BTreeMap<String, String> = (0..10_000)
            .map(|i| {
                (
                    format!("k{i:05}"),
                    "v".repeat(if i == 3 { 1 << 20 } else { 3 }),
                )
            })
            .collect();
        m.insert("x".repeat(10_000), "y".into());
        assert!(bound_map(&mut m));
        assert_eq!(m.len(), MAX_ENTRIES);
        assert!(m.keys().all(|k| k.len() <= MAX_KEY_BYTES));
        assert!(m.values().all(|v| v.len() <= MAX_VALUE_BYTES));
        assert!(m["k00003"].ends_with('…'));
        let before = m.clone();
        assert!(!bound_map(&mut m), "a bounded map is left alone");
        assert_eq!(m, before);
    }

    #[test]
    fn printable_escapes_terminal_controls_and_bidi_overrides() {
        assert!(matches!(printable("meta.db"), Cow::Borrowed("meta.db")));
        let hostile = "a\u{1b}]0;pwned\u{7}\u{1b}[31mb\nc\u{202e}d\u{9b}";
        let shown = printable(hostile);
        assert!(!shown.chars().any(needs_escape), "{shown:?}");
        assert_eq!(shown, "a\\x1b]0;pwned\\x07\\x1b[31mb\\nc\\u{202e}d\\x9b");
    }
}
