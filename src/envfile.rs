//! `--env-file`: a dotenv file loaded into the process environment before
//! the app is imported, as uvicorn does with python-dotenv.
//!
//! The format is the common subset of dotenv dialects: `KEY=VALUE` lines,
//! blank lines and `#` comments, an optional `export ` prefix, values in
//! single quotes (taken literally) or double quotes (with `\n`, `\t`, `\"`
//! and `\\` escapes, and may span lines), and `${NAME}` references in
//! unquoted and double-quoted values. A variable already set in the
//! environment keeps its value, as with python-dotenv's default.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Why the env file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum EnvFileError {
    #[error("could not read --env-file {path:?}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid --env-file {path:?} line {line}: {reason}")]
    Syntax {
        path: PathBuf,
        line: usize,
        reason: &'static str,
    },
}

/// Reads `path` and sets each variable that the environment lacks. Returns
/// the number of variables set.
///
/// Call it before any other thread starts: changing the environment while
/// another thread reads it is undefined behaviour in C libraries.
pub fn load(path: &Path) -> Result<usize, EnvFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| EnvFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let pairs = parse(&text, |name| std::env::var(name).ok()).map_err(|(line, reason)| {
        EnvFileError::Syntax {
            path: path.to_owned(),
            line,
            reason,
        }
    })?;
    let mut set = 0;
    for (name, value) in pairs {
        if std::env::var_os(&name).is_none() {
            std::env::set_var(&name, value);
            set += 1;
        }
    }
    Ok(set)
}

/// Parses dotenv text into `(name, value)` pairs in file order. `lookup`
/// resolves `${NAME}` references to variables not defined earlier in the
/// file. Errors carry the 1-based line number and the reason.
pub fn parse(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, (usize, &'static str)> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut defined: HashMap<String, String> = HashMap::new();
    let mut lines = text.lines().enumerate();

    while let Some((index, line)) = lines.next() {
        let line_no = index + 1;
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map_or(line, str::trim_start);
        let (name, rest) = line
            .split_once('=')
            .ok_or((line_no, "expected KEY=VALUE"))?;
        let name = name.trim_end();
        if !is_name(name) {
            return Err((line_no, "invalid variable name"));
        }

        let rest = rest.trim_start();
        let resolve = |name: &str| defined.get(name).cloned().or_else(|| lookup(name));
        let value = match rest.chars().next() {
            Some(quote @ ('"' | '\'')) => {
                // A quoted value may continue on the following lines.
                let mut raw = rest[1..].to_owned();
                let close = loop {
                    if let Some(end) = closing_quote(&raw, quote) {
                        break end;
                    }
                    let (_, next) = lines.next().ok_or((line_no, "unterminated quoted value"))?;
                    raw.push('\n');
                    raw.push_str(next);
                };
                let after = raw[close + 1..].trim_start();
                if !after.is_empty() && !after.starts_with('#') {
                    return Err((line_no, "unexpected text after the closing quote"));
                }
                let body = &raw[..close];
                if quote == '\'' {
                    body.to_owned()
                } else {
                    expand(&unescape(body), resolve)
                }
            }
            _ => {
                // An unquoted value ends at a comment that follows a space.
                let end = rest.find(" #").unwrap_or(rest.len());
                expand(rest[..end].trim_end(), resolve)
            }
        };
        defined.insert(name.to_owned(), value.clone());
        pairs.push((name.to_owned(), value));
    }
    Ok(pairs)
}

fn is_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

/// Byte index of the quote that closes a value, skipping `\"` in double quotes.
fn closing_quote(text: &str, quote: char) -> Option<usize> {
    let mut escaped = false;
    for (index, c) in text.char_indices() {
        match c {
            '\\' if quote == '"' && !escaped => escaped = true,
            c if c == quote && !escaped => return Some(index),
            _ => escaped = false,
        }
    }
    None
}

fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some(other @ ('"' | '\\' | '$')) => out.push(other),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// Replaces `${NAME}` with its value, or with nothing when it is unset.
fn expand(text: &str, resolve: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let Some(len) = rest[start + 2..].find('}') else {
            break;
        };
        let name = &rest[start + 2..start + 2 + len];
        out.push_str(&rest[..start]);
        out.push_str(&resolve(name).unwrap_or_default());
        rest = &rest[start + 3 + len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Vec<(String, String)> {
        parse(text, |name| {
            (name == "HOME").then(|| "/home/app".to_owned())
        })
        .unwrap()
    }

    fn pair(name: &str, value: &str) -> (String, String) {
        (name.to_owned(), value.to_owned())
    }

    #[test]
    fn plain_values_comments_and_export() {
        let text = "# settings\n\nA=1\nexport B = two words \nC=x # note\nD=a#b\nE=\n";
        assert_eq!(
            parsed(text),
            [
                pair("A", "1"),
                pair("B", "two words"),
                pair("C", "x"),
                pair("D", "a#b"),
                pair("E", "")
            ]
        );
    }

    #[test]
    fn quoted_values() {
        let text = "S='it''s'\nL='a # b $HOME ${HOME}'\nQ=\"line\\nnext \\\"q\\\"\" # c\n";
        let pairs = parse(text, |_| None);
        assert!(pairs.is_err(), "adjacent quoted strings are not supported");
        let text = "L='a # b ${HOME}'\nQ=\"line\\nnext \\\"q\\\"\" # c\n";
        assert_eq!(
            parsed(text),
            [pair("L", "a # b ${HOME}"), pair("Q", "line\nnext \"q\"")]
        );
    }

    #[test]
    fn multiline_double_quoted_value() {
        let text = "KEY=\"-----BEGIN-----\nabc\n-----END-----\"\nNEXT=1";
        assert_eq!(
            parsed(text),
            [
                pair("KEY", "-----BEGIN-----\nabc\n-----END-----"),
                pair("NEXT", "1")
            ]
        );
    }

    #[test]
    fn references_expand_from_file_then_environment() {
        let text = "BASE=/srv\nDATA=${BASE}/data\nCACHE=\"${HOME}/cache\"\nNONE=${MISSING}x";
        assert_eq!(
            parsed(text),
            [
                pair("BASE", "/srv"),
                pair("DATA", "/srv/data"),
                pair("CACHE", "/home/app/cache"),
                pair("NONE", "x")
            ]
        );
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(
            parse("A=1\nnot a pair", |_| None),
            Err((2, "expected KEY=VALUE"))
        );
        assert_eq!(parse("1A=x", |_| None), Err((1, "invalid variable name")));
        assert_eq!(
            parse("A=\"open\nstill open", |_| None),
            Err((1, "unterminated quoted value"))
        );
        assert_eq!(
            parse("A='x' y", |_| None),
            Err((1, "unexpected text after the closing quote"))
        );
    }

    #[test]
    fn windows_line_endings() {
        assert_eq!(parsed("A=1\r\nB='2'\r\n"), [pair("A", "1"), pair("B", "2")]);
    }
}
