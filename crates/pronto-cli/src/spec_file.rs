//! Function spec files: what `pronto deploy -f` reads.
//!
//! Three layouts, told apart by their top-level keys:
//! - one function: a mapping of Function Compute 3.0 fields (`functionName`,
//!   `customContainerConfig`, `memorySize`, ...), as `pronto function create -f` takes;
//! - several: `functions:`, a list of such mappings;
//! - Serverless Devs' `s.yaml` for the FC 3.0 component: `resources:`, each resource with
//!   `component: fc3` and its function under `props` (`edition`, `name`, `access` and `vars`
//!   beside it; `${vars.NAME}` and `${env(NAME)}` are substituted in strings). Of the props that
//!   are not function fields, `region` is ignored (functions run on this node) and HTTP
//!   `triggers` are ignored (every function is invoked over HTTP); any other is refused by name.
//!   Resources of other components are skipped with a note.
//!
//! Every error names the file, line and column of the field at fault (`FILE:LINE:COL: FIELD:
//! REASON`). The file is parsed with `serde_yaml`, whose errors carry a location but whose
//! values do not; a field's location is found by a second pass over the text
//! ([`locate`]): a deserializer seed that walks down to the field and fails there, and
//! `serde_yaml` marks its error with the position of the value (or key) it was reading.

use std::fmt;
use std::path::{Path, PathBuf};

use pronto_server::model::{FunctionInput, FunctionSpec};
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// A problem in a spec file, at a place in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    pub file: PathBuf,
    /// 1-based; `None` when the problem is the file as a whole (cannot be read).
    pub at: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.file.display(), self.message)
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for FileError {}

/// One step of a path into the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// `a.b[2].c` (the form of serde_path_to_error and of the API's field names).
pub fn parse_path(s: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in s.split('.').filter(|p| !p.is_empty()) {
        let (name, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
        if !name.is_empty() {
            out.push(Seg::Key(name.to_string()));
        }
        while let Some(open) = rest.strip_prefix('[') {
            let Some(close) = open.find(']') else { break };
            match open[..close].parse() {
                Ok(i) => out.push(Seg::Index(i)),
                Err(_) => out.push(Seg::Key(open[..close].to_string())),
            }
            rest = &open[close + 1..];
        }
    }
    out
}

pub fn path_string(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// A function found in the file.
#[derive(Debug, Clone)]
pub struct FunctionEntry {
    /// Where its mapping is (`[]`, `functions[1]`, `resources.web.props`).
    pub at: Vec<Seg>,
    pub name: String,
    /// The body for `CreateFunction` (Function Compute fields only).
    pub body: Value,
    /// What it asks for, every default applied.
    pub spec: FunctionSpec,
}

/// A spec file, parsed.
#[derive(Debug)]
pub struct SpecFile {
    pub path: PathBuf,
    text: String,
    pub functions: Vec<FunctionEntry>,
    /// Things ignored or skipped, for the user.
    pub notes: Vec<String>,
}

impl SpecFile {
    pub fn load(path: &Path) -> Result<SpecFile, FileError> {
        let text = std::fs::read_to_string(path).map_err(|e| FileError {
            file: path.to_owned(),
            at: None,
            message: format!("cannot read it: {e}"),
        })?;
        SpecFile::parse(path, text)
    }

    pub fn parse(path: &Path, text: String) -> Result<SpecFile, FileError> {
        let mut file = SpecFile {
            path: path.to_owned(),
            text,
            functions: Vec::new(),
            notes: Vec::new(),
        };
        // serde_yaml's own Value refuses duplicate keys (with their place); JSON from there.
        let yaml: serde_yaml::Value = serde_yaml::from_str(&file.text).map_err(|e| FileError {
            file: path.to_owned(),
            at: e.location().map(|l| (l.line(), l.column())),
            message: strip_location(&e.to_string()),
        })?;
        let root: Value = serde_json::to_value(&yaml)
            .map_err(|e| file.error(&[], format!("not a spec file: {e}")))?;
        let Value::Object(top) = &root else {
            return Err(file.error(
                &[],
                "expected a mapping: a function's fields, `functions:` or an s.yaml's `resources:`",
            ));
        };
        if top.contains_key("resources") {
            file.load_s_yaml(top)?;
        } else if let Some(list) = top.get("functions") {
            let at = vec![Seg::Key("functions".into())];
            let Value::Array(list) = list else {
                return Err(file.error(&at, "functions: expected a list of functions"));
            };
            if let Some(extra) = top.keys().find(|k| *k != "functions") {
                let at = vec![Seg::Key(extra.clone())];
                return Err(
                    file.error_at_key(&at, format!("unknown field `{extra}` beside `functions`"))
                );
            }
            for (i, f) in list.iter().enumerate() {
                let mut at = at.clone();
                at.push(Seg::Index(i));
                file.add_function(at, f.clone())?;
            }
        } else {
            file.add_function(Vec::new(), root.clone())?;
        }
        if file.functions.is_empty() {
            return Err(file.error(&[], "no function in the file"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for f in &file.functions {
            if !seen.insert(f.name.clone()) {
                return Err(file.error(&f.at, format!("function {} is described twice", f.name)));
            }
        }
        Ok(file)
    }

    fn load_s_yaml(&mut self, top: &Map<String, Value>) -> Result<(), FileError> {
        const KNOWN: [&str; 5] = ["edition", "name", "access", "vars", "resources"];
        if let Some(extra) = top.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(self.error_at_key(
                &[Seg::Key(extra.clone())],
                format!(
                    "unknown field `{extra}` in an s.yaml (expected one of {})",
                    KNOWN.join(", ")
                ),
            ));
        }
        let vars = top.get("vars").cloned().unwrap_or(Value::Null);
        let Some(Value::Object(resources)) = top.get("resources") else {
            return Err(self.error(
                &[Seg::Key("resources".into())],
                "resources: expected a mapping of resources",
            ));
        };
        for (name, resource) in resources {
            let at = vec![Seg::Key("resources".into()), Seg::Key(name.clone())];
            let component = resource
                .get("component")
                .and_then(Value::as_str)
                .unwrap_or("");
            // `fc3`, `fc3@0.1.2`, `devsapp/fc3`.
            let base = component.split('@').next().unwrap_or("");
            if base != "fc3" && base != "devsapp/fc3" {
                self.notes.push(format!(
                    "skipped resource {name}: component {component:?} is not fc3"
                ));
                continue;
            }
            let mut props_at = at.clone();
            props_at.push(Seg::Key("props".into()));
            let Some(Value::Object(props)) = resource.get("props") else {
                return Err(self.error(
                    &at,
                    format!("resources.{name}.props: expected the function's fields"),
                ));
            };
            let mut props = Value::Object(props.clone());
            substitute(&mut props, &vars, &mut props_at.clone(), self)?;
            let obj = props.as_object_mut().expect("an object");
            if obj.remove("region").is_some() {
                self.notes.push(format!(
                    "{name}: region ignored (functions run on this node)"
                ));
            }
            if let Some(triggers) = obj.remove("triggers") {
                for (i, t) in triggers.as_array().into_iter().flatten().enumerate() {
                    let kind = t.get("triggerType").and_then(Value::as_str).unwrap_or("");
                    if kind != "http" {
                        let mut at = props_at.clone();
                        at.extend([
                            Seg::Key("triggers".into()),
                            Seg::Index(i),
                            Seg::Key("triggerType".into()),
                        ]);
                        return Err(self.error(
                            &at,
                            format!("triggers[{i}].triggerType: only http triggers are supported, got {kind:?}"),
                        ));
                    }
                }
                self.notes.push(format!(
                    "{name}: http triggers ignored (every function is invoked at /invoke/FUNCTION)"
                ));
            }
            self.add_function(props_at, props)?;
        }
        Ok(())
    }

    fn add_function(&mut self, at: Vec<Seg>, body: Value) -> Result<(), FileError> {
        if !body.is_object() {
            return Err(self.error(&at, "expected a mapping of function fields"));
        }
        let input: FunctionInput = serde_path_to_error::deserialize(body.clone()).map_err(|e| {
            let mut path = at.clone();
            path.extend(parse_path(&e.path().to_string()));
            let message = e.inner().to_string();
            // Unknown fields: at the key, named in the message.
            if let Some(field) = unknown_field(&message) {
                if path.last() != Some(&Seg::Key(field.clone())) {
                    path.push(Seg::Key(field));
                }
                let rel = path_string(&path[at.len()..]);
                return self.error_at_key(&path, format!("{rel}: {message}"));
            }
            let rel = path_string(&path[at.len()..]);
            self.error(&path, format!("{rel}: {message}"))
        })?;
        let patch = input
            .validate()
            .map_err(|e| self.field_error(&at, &e.field, &e.reason))?;
        let (spec, _) = patch
            .into_new_spec()
            .map_err(|e| self.field_error(&at, &e.field, &e.reason))?;
        let name = spec.function_name.clone();
        self.functions.push(FunctionEntry {
            at,
            name,
            body,
            spec,
        });
        Ok(())
    }

    /// `FIELD: REASON` of a function at `at`, placed at the field (or the nearest enclosing
    /// thing the file has: a missing field is reported at its function).
    pub fn field_error(&self, at: &[Seg], field: &str, reason: &str) -> FileError {
        let mut path = at.to_vec();
        path.extend(parse_path(field));
        self.error(&path, format!("{field}: {reason}"))
    }

    /// An error placed at the value at `path`, or its nearest ancestor in the file.
    pub fn error(&self, path: &[Seg], message: impl Into<String>) -> FileError {
        self.placed(path, false, message.into())
    }

    fn error_at_key(&self, path: &[Seg], message: impl Into<String>) -> FileError {
        self.placed(path, true, message.into())
    }

    fn placed(&self, path: &[Seg], key: bool, message: String) -> FileError {
        let mut at = None;
        for n in (0..=path.len()).rev() {
            if let Some(found) = locate(&self.text, &path[..n], key && n == path.len()) {
                at = Some(found);
                break;
            }
        }
        FileError {
            file: self.path.clone(),
            at,
            message,
        }
    }

    /// If `message` (from the server, `FIELD: REASON`) names a field of the function at `at`
    /// that the file has, the same message placed there.
    pub fn place_server_message(&self, at: &[Seg], message: &str) -> Option<FileError> {
        let (field, _) = message.split_once(": ")?;
        let mut path = at.to_vec();
        path.extend(parse_path(field));
        let found = locate(&self.text, &path, false)?;
        Some(FileError {
            file: self.path.clone(),
            at: Some(found),
            message: message.to_string(),
        })
    }
}

/// serde_yaml puts ` at line L column C` in its messages: the location is shown in front.
fn strip_location(message: &str) -> String {
    let Some(i) = message.find(" at line ") else {
        return message.to_string();
    };
    let rest = &message[i + " at line ".len()..];
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    let rest = rest.strip_prefix(" column ").unwrap_or(rest);
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    format!("{}{rest}", &message[..i])
}

/// The field of serde's "unknown field `X`, expected ..." message.
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_string())
}

/// `${vars.NAME}`, `${env(NAME)}`, `${env('NAME')}` and `${env.NAME}` in the strings of `v`.
fn substitute(
    v: &mut Value,
    vars: &Value,
    at: &mut Vec<Seg>,
    file: &SpecFile,
) -> Result<(), FileError> {
    match v {
        Value::String(s) if s.contains("${") => {
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${") {
                out.push_str(&rest[..start]);
                let Some(len) = rest[start..].find('}') else {
                    return Err(
                        file.error(at, format!("{}: unclosed ${{ in {s:?}", path_string(at)))
                    );
                };
                let expr = rest[start + 2..start + len].trim();
                let value = if let Some(name) = expr.strip_prefix("vars.") {
                    vars.get(name).map(|v| match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                } else if let Some(name) = expr
                    .strip_prefix("env(")
                    .and_then(|e| e.strip_suffix(')'))
                    .or_else(|| expr.strip_prefix("env."))
                {
                    std::env::var(name.trim_matches(['\'', '"'])).ok()
                } else {
                    None
                };
                let Some(value) = value else {
                    return Err(file.error(
                        at,
                        format!("{}: cannot substitute ${{{expr}}} (Pronto knows ${{vars.NAME}} and ${{env(NAME)}}, set ones only)", path_string(at)),
                    ));
                };
                out.push_str(&value);
                rest = &rest[start + len + 1..];
            }
            out.push_str(rest);
            *s = out;
        }
        Value::Object(o) => {
            for (k, v) in o.iter_mut() {
                at.push(Seg::Key(k.clone()));
                substitute(v, vars, at, file)?;
                at.pop();
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter_mut().enumerate() {
                at.push(Seg::Index(i));
                substitute(v, vars, at, file)?;
                at.pop();
            }
        }
        _ => {}
    }
    Ok(())
}

const HERE: &str = "\u{0}pronto-locate-here";

/// Where the value at `path` (or, with `key`, its key) is in `text`: 1-based line and column.
pub fn locate(text: &str, path: &[Seg], key: bool) -> Option<(usize, usize)> {
    let de = serde_yaml::Deserializer::from_str(text);
    match (Seek { path, key }).deserialize(de) {
        Err(e) if e.to_string().contains(HERE) => e.location().map(|l| (l.line(), l.column())),
        _ => None,
    }
}

/// Walks down `path`; fails at the end of it (so that serde_yaml marks the place), or returns
/// `Ok` when the path is not in the document.
struct Seek<'p> {
    path: &'p [Seg],
    /// Fail at the last key rather than at its value.
    key: bool,
}

impl<'de> DeserializeSeed<'de> for Seek<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seek<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("anything")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((first, rest)) = self.path.split_first() else {
            return Err(serde::de::Error::custom(HERE));
        };
        let want = match first {
            Seg::Key(k) => k.clone(),
            Seg::Index(i) => i.to_string(),
        };
        let at_key = self.key && rest.is_empty();
        while let Some(found) = map.next_key_seed(KeySeed {
            want: &want,
            fail: at_key,
        })? {
            if found {
                map.next_value_seed(Seek {
                    path: rest,
                    key: self.key,
                })?;
                return Ok(());
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((first, rest)) = self.path.split_first() else {
            return Err(serde::de::Error::custom(HERE));
        };
        let want = match first {
            Seg::Index(i) => *i,
            Seg::Key(k) => match k.parse() {
                Ok(i) => i,
                Err(_) => return Ok(()),
            },
        };
        for _ in 0..want {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        seq.next_element_seed(Seek {
            path: rest,
            key: self.key,
        })?;
        Ok(())
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        self.scalar()
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        self.scalar()
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.scalar()
    }
}

impl Seek<'_> {
    fn scalar<E: serde::de::Error>(&self) -> Result<(), E> {
        if self.path.is_empty() {
            Err(E::custom(HERE))
        } else {
            Ok(())
        }
    }
}

/// A mapping key: whether it is the one wanted; with `fail`, the wanted one is an error.
struct KeySeed<'w> {
    want: &'w str,
    fail: bool,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = bool;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<bool, E> {
        if v == self.want && self.fail {
            return Err(E::custom(HERE));
        }
        Ok(v == self.want)
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<bool, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<bool, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<bool, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(false)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SpecFile, FileError> {
        SpecFile::parse(Path::new("f.yaml"), text.to_string())
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    const ONE: &str = "functionName: web\ncustomContainerConfig:\n  image: r.example/a:v1\n  port: 8080\nmemorySize: 256\n";

    #[test]
    fn one_function_with_defaults_applied() {
        let f = parse(ONE).unwrap();
        assert_eq!(f.functions.len(), 1);
        let spec = &f.functions[0].spec;
        assert_eq!(spec.function_name, "web");
        assert_eq!(spec.memory_size, 256);
        assert_eq!(spec.custom_container_config.port, 8080);
        assert_eq!(spec.timeout, pronto_server::model::DEFAULT_TIMEOUT);
    }

    #[test]
    fn locations_of_values_and_keys() {
        let text = "a:\n  b: 1\n  c:\n    - x\n    - y\n";
        let p = |s: &str| parse_path(s);
        assert_eq!(locate(text, &p("a.b"), false), Some((2, 6)));
        assert_eq!(locate(text, &p("a.b"), true), Some((2, 3)));
        assert_eq!(locate(text, &p("a.c[1]"), false), Some((5, 7)));
        assert_eq!(locate(text, &p("a.d"), false), None);
    }

    #[test]
    fn errors_name_file_line_column_and_field() {
        assert_eq!(
            err("functionName: web\ncustomContainerConfig:\n  image: a:v1\n  prot: 80\n"),
            "f.yaml:4:3: customContainerConfig.prot: unknown field `prot`, expected one of \
             `image`, `entrypoint`, `command`, `args`, `port`, `accelerationType`, \
             `healthCheckConfig`, `acrInstanceId`, `registryConfig`, `artifactRepository`"
        );
        assert_eq!(
            err("functionName: web\ncustomContainerConfig:\n  image: a:v1\nmemorySize: 200\n"),
            "f.yaml:4:13: memorySize: must be a multiple of 64, got 200"
        );
        assert_eq!(
            err("functionName: web\nmemorySize: [1\n"),
            "f.yaml:3:1: did not find expected ',' or ']', while parsing a flow sequence at line 2 \
             column 13"
        );
        assert!(err("functionName: web\n")
            .starts_with("f.yaml:1:1: customContainerConfig.image: is required"));
        assert_eq!(
            err("functionName: web\ncustomContainerConfig:\n  image: a:v1\ntimeout: soon\n"),
            "f.yaml:4:10: timeout: invalid type: string \"soon\", expected i64"
        );
    }

    #[test]
    fn several_functions_and_an_s_yaml() {
        let f = parse("functions:\n  - functionName: a\n    customContainerConfig: {image: x:1}\n  - functionName: b\n    customContainerConfig: {image: x:2}\n").unwrap();
        assert_eq!(
            f.functions
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        let s = "edition: 3.0.0\nname: app\naccess: default\nvars:\n  region: cn-hangzhou\n  img: x:1\nresources:\n  web:\n    component: fc3\n    props:\n      region: ${vars.region}\n      functionName: web\n      runtime: custom-container\n      customContainerConfig:\n        image: ${vars.img}\n      triggers:\n        - triggerName: http\n          triggerType: http\n  other:\n    component: fc3-domain\n    props: {}\n";
        let f = parse(s).unwrap();
        assert_eq!(f.functions.len(), 1);
        assert_eq!(f.functions[0].spec.custom_container_config.image, "x:1");
        assert_eq!(f.notes.len(), 3, "{:?}", f.notes);
        let bad = s.replace("triggerType: http", "triggerType: timer");
        assert_eq!(
            err(&bad),
            "f.yaml:18:24: triggers[0].triggerType: only http triggers are supported, got \"timer\""
        );
        let unknown = s.replace("      runtime:", "      memSize: 1\n      runtime:");
        assert!(
            err(&unknown).starts_with("f.yaml:13:7: memSize: unknown field `memSize`"),
            "{}",
            err(&unknown)
        );
    }
}
