//! Output for people and for programs. `-o table` (the default when stdout is a terminal)
//! prints aligned tables and key/value listings; `-o json` (the default otherwise, so scripts
//! and pipes keep getting what the API returned) and `-o yaml` print the answer whole, with
//! camelCase keys as the API has them. Colour only on a terminal and never with `NO_COLOR`.

use std::io::IsTerminal;

use serde_json::Value;

/// `-o`: how answers are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns and key/value listings, for people.
    Table,
    /// The API's JSON (camelCase), pretty-printed.
    Json,
    /// The same as YAML.
    Yaml,
}

/// Where answers go and how they look.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub format: OutputFormat,
    /// ANSI colours in tables (stdout a terminal, `NO_COLOR` unset or empty).
    pub color: bool,
}

/// Colours only for a terminal, and never with `NO_COLOR` set to anything (no-color.org).
pub fn use_color(is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

impl Output {
    /// `-o` as given, else a table on a terminal and JSON otherwise.
    pub fn new(format: Option<OutputFormat>) -> Output {
        let terminal = std::io::stdout().is_terminal();
        Output {
            format: format.unwrap_or(if terminal {
                OutputFormat::Table
            } else {
                OutputFormat::Json
            }),
            color: use_color(terminal, std::env::var_os("NO_COLOR")),
        }
    }

    /// Prints `v` as JSON or YAML, or as `table(v)` renders it.
    pub fn print(
        &self,
        v: &Value,
        table: impl FnOnce(&Value, &Output) -> String,
    ) -> anyhow::Result<()> {
        match self.format {
            OutputFormat::Json => println!("{}", serde_json::to_string_pretty(v)?),
            OutputFormat::Yaml => print!("{}", serde_yaml::to_string(v)?),
            OutputFormat::Table => {
                let text = table(v, self);
                print!("{text}");
                if !text.ends_with('\n') {
                    println!();
                }
            }
        }
        Ok(())
    }

    /// A status word, coloured on a terminal: green when done, yellow while under way, red
    /// when failed.
    pub fn status(&self, word: &str) -> String {
        let code = match word {
            "Ready" | "Successful" | "created" | "updated" => "32",
            "Preparing" | "InProgress" => "33",
            "Failed" => "31",
            _ => return word.to_string(),
        };
        if self.color {
            format!("\x1b[{code}m{word}\x1b[0m")
        } else {
            word.to_string()
        }
    }
}

/// Columns aligned on the widest cell (in characters; colour codes do not count).
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Table {
        Table {
            rows: vec![headers.into_iter().map(Into::into).collect()],
        }
    }

    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0; columns];
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(visible_len(cell));
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if i + 1 < row.len() {
                    line.extend(std::iter::repeat_n(' ', widths[i] - visible_len(cell) + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Characters a terminal shows: ANSI escape sequences (`ESC [ ... m`) take no room.
fn visible_len(s: &str) -> usize {
    let mut n = 0;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            n += 1;
        }
    }
    n
}

/// A JSON value as one short cell: strings bare, `-` for null and empty, others compact.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) if a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        Value::Object(o) if o.is_empty() => "-".into(),
        other => other.to_string(),
    }
}

/// Two columns, field and value, nested objects flattened with dotted names; `order` first,
/// then the rest alphabetically.
pub fn fields(v: &Value, order: &[&str]) -> String {
    let mut flat = Vec::new();
    flatten("", v, &mut flat);
    let rank = |k: &str| order.iter().position(|o| *o == k).unwrap_or(order.len());
    flat.sort_by(|(a, _), (b, _)| rank(a).cmp(&rank(b)).then(a.cmp(b)));
    let mut t = Table::default();
    for (k, v) in flat {
        t.row([k, v]);
    }
    t.render()
}

fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(o) if !o.is_empty() => {
            for (k, v) in o {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        _ => out.push((prefix.to_string(), cell(v))),
    }
}

/// `snake_case` keys made `camelCase` throughout (library summaries serialize their Rust
/// field names; the CLI's JSON uses the API's style everywhere).
pub fn camel_keys(v: Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (camel(&k), camel_keys(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(camel_keys).collect()),
        other => other,
    }
}

fn camel(k: &str) -> String {
    let mut out = String::with_capacity(k.len());
    let mut upper = false;
    for c in k.chars() {
        if c == '_' && !out.is_empty() {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Bytes for people: `512 B`, `3.4 kB`, `12.0 MB`, `1.25 GB` (powers of 1000).
pub fn bytes(n: u64) -> String {
    let n = n as f64;
    if n < 1e3 {
        format!("{n} B")
    } else if n < 1e6 {
        format!("{:.1} kB", n / 1e3)
    } else if n < 1e9 {
        format!("{:.1} MB", n / 1e6)
    } else {
        format!("{:.2} GB", n / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn tables_align_on_the_visible_width() {
        let mut t = Table::new(["NAME", "STATUS"]);
        t.row(["a-long-name", "\x1b[32mReady\x1b[0m"]);
        t.row(["b", "Failed"]);
        assert_eq!(
            t.render(),
            "NAME         STATUS\na-long-name  \x1b[32mReady\x1b[0m\nb            Failed\n"
        );
    }

    #[test]
    fn keys_become_camel_case() {
        assert_eq!(
            camel_keys(
                json!({"file_bytes": 1, "layers": [{"compressed_bytes": 2}], "a": {"b_c_d": 3}})
            ),
            json!({"fileBytes": 1, "layers": [{"compressedBytes": 2}], "a": {"bCD": 3}})
        );
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_color(true, None));
        assert!(!use_color(false, None));
        assert!(!use_color(true, Some("1".into())));
        assert!(use_color(true, Some("".into())));
        let plain = Output {
            format: OutputFormat::Table,
            color: false,
        };
        assert_eq!(plain.status("Ready"), "Ready");
    }

    #[test]
    fn fields_flatten_nested_objects() {
        let v = json!({"b": 1, "a": {"x": "y", "z": []}, "name": "f"});
        assert_eq!(
            fields(&v, &["name"]),
            "name  f\na.x   y\na.z   -\nb     1\n"
        );
    }
}
