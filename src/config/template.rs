//! Instrument templates: an instrument model described once (`[[template]]`) and
//! instantiated per module (`[[module]] template = "..." args = { ... }`), and `include`
//! of files holding templates.
//!
//! Expansion works on the TOML tree before the `config` crate sees it: the result is an
//! ordinary configuration (written back as TOML), so environment overrides, validation
//! and everything after see plain modules. Key order is kept (the template's, then the
//! module's additions), so descriptions are the same from run to run.
//!
//! Placeholders are `${name}` in string values of a template; `$${` is a literal `${`.
//! ASCII write templates (`{value:.3f}`, `{{`) are not touched. A string that is exactly
//! one placeholder takes the argument's type (`address = "${base}"` with `base = 100`
//! is the integer 100); inside a longer string the argument is written as text.

use super::{Blame, Origin, Problem};
use std::path::{Path, PathBuf};
use toml::de::{DeTable, DeValue};

/// Files an include chain may nest (the main file is level 0).
pub const MAX_INCLUDE_DEPTH: usize = 4;
/// Files included in all.
pub const MAX_INCLUDED_FILES: usize = 32;
/// Bytes of one included file.
pub const MAX_INCLUDE_BYTES: u64 = 1 << 20;

/// The keys a template may give: those of a module on a link, except where it is
/// (`name`, `link`).
const BODY_KEYS: &[&str] = &[
    "class",
    "description",
    "properties",
    "parameter",
    "command",
    "drive",
    "unit_id",
    "pollinterval",
    "required",
];

/// Why templates or includes were refused; `Display` is "key: reason".
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{key}: {}: cannot read: {source}", path.display())]
    Read {
        key: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key}: {}: not a regular file", path.display())]
    NotAFile { key: String, path: PathBuf },
    #[error("{key}: {}: larger than {MAX_INCLUDE_BYTES} bytes", path.display())]
    TooLarge { key: String, path: PathBuf },
    #[error("{key}: {}: includes nest deeper than {MAX_INCLUDE_DEPTH} files", path.display())]
    TooDeep { key: String, path: PathBuf },
    #[error("{key}: {}: more than {MAX_INCLUDED_FILES} files are included", path.display())]
    TooMany { key: String, path: PathBuf },
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: Reason },
}

/// What is wrong with a key of a template, an include or an instance.
#[derive(Debug, thiserror::Error)]
pub enum Reason {
    #[error("must be a list of file names, relative to this file (include = [\"../templates/lakeshore336.toml\"])")]
    IncludeList,
    #[error("an included file holds [[template]] sections and include only")]
    NotATemplateFile,
    #[error("must be [[template]] sections")]
    TemplateSections,
    #[error("missing: every template has a name")]
    NameMissing,
    #[error("another template is named {name:?} ({other})")]
    Duplicate { name: String, other: String },
    #[error("must be a list of placeholder names (params = [\"input\", \"loop\"])")]
    ParamsList,
    #[error("{0:?} is not a placeholder name ([A-Za-z_][A-Za-z0-9_]*)")]
    ParamName(String),
    #[error("{0:?} is listed twice")]
    ParamTwice(String),
    #[error("must be a table of default arguments (defaults = {{ loop = 1 }})")]
    DefaultsTable,
    #[error("{0:?} is not one of params")]
    DefaultNotParam(String),
    #[error("templates cannot use templates")]
    Nested,
    #[error("a template describes the instrument, not where it is: give {0} on each [[module]]")]
    InstanceKey(&'static str),
    #[error("not a key of a template (class, description, properties, parameter, command, drive, unit_id, pollinterval, required)")]
    UnknownKey,
    #[error("${{{name}}} is not one of the template's params ({known})")]
    Undeclared { name: String, known: String },
    #[error("\"${{\" without a closing \"}}\" (write \"$${{\" for a literal \"${{\")")]
    Unclosed,
    #[error("{0:?} is never used in the template (write ${{{0}}} where it belongs, or remove it)")]
    Unused(String),
    #[error("must be the name of a [[template]]")]
    TemplateName,
    #[error("no template is named {name:?} (there are: {known})")]
    UnknownTemplate { name: String, known: String },
    #[error("templates are for modules on a link, not for driver {0:?}")]
    Driver(String),
    #[error("args without template (template = \"...\" names the template they are for)")]
    ArgsWithoutTemplate,
    #[error("must be a table (args = {{ input = \"A\" }})")]
    ArgsTable,
    #[error("missing {name:?}: template {template:?} needs {needs}")]
    MissingArg {
        name: String,
        template: String,
        needs: String,
    },
    #[error("template {template:?} has no parameter {name:?} (it has {known})")]
    UnknownArg {
        name: String,
        template: String,
        known: String,
    },
    #[error("a list or table cannot be written into the text {text:?}; use it as the whole value (\"${{{name}}}\")")]
    NotText { name: String, text: String },
}

impl TemplateError {
    fn invalid(key: impl Into<String>, reason: Reason) -> Self {
        TemplateError::Invalid {
            key: key.into(),
            reason,
        }
    }
}

/// A module made from a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Its index among the `[[module]]` sections.
    pub module: usize,
    pub name: String,
    pub template: String,
    /// The included file the template comes from (`None`: the configuration file).
    pub file: Option<PathBuf>,
    /// The arguments, defaults included, in the template's order: `input = "A", loop = 1`.
    pub args: String,
}

impl Instance {
    /// ` from template "x"` (and its file), for messages about the module.
    fn note(&self) -> String {
        match &self.file {
            Some(f) => format!(" from template {:?} ({})", self.template, f.display()),
            None => format!(" from template {:?}", self.template),
        }
    }

    /// A message about the module, saying which template it comes from: `module[2]
    /// ("T_B").parameter[0]...` → `module[2] ("T_B") from template "x": parameter[0]...`.
    pub fn annotate(&self, problem: &str) -> String {
        let note = self.note();
        let indexed = format!("module[{}] ({:?})", self.module, self.name);
        if let Some(at) = problem.find(&indexed) {
            let end = at + indexed.len();
            let rest = &problem[end..];
            let rest = match rest.strip_prefix('.') {
                Some(r) => format!(": {r}"),
                None => rest.to_owned(),
            };
            return format!("{}{note}{rest}", &problem[..end]);
        }
        for named in [
            format!("module {:?}", self.name),
            format!("module {}:", self.name),
        ] {
            if let Some(at) = problem.find(&named) {
                let end = at + named.len() - usize::from(named.ends_with(':'));
                return format!("{}{note}{}", &problem[..end], &problem[end..]);
            }
        }
        problem.to_owned()
    }
}

/// A configuration with its templates instantiated.
#[derive(Debug)]
pub struct Expansion {
    /// The TOML text for the `config` crate; `None` when the file uses no templates or
    /// includes (then it is read as written).
    pub text: Option<String>,
    /// The expanded configuration as TOML (what `check-config --expanded` prints).
    pub toml: String,
    pub instances: Vec<Instance>,
}

/// A TOML value, in the order of its file.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Str(String),
    Int(i64),
    /// The value and the text the file wrote (used when it is written into a string).
    Float(f64, String),
    Bool(bool),
    /// A date-time or a number beyond what the types above hold, as TOML text.
    Raw(String),
    Array(Vec<Item>),
    Table(Table),
}

/// A TOML table in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table(Vec<(String, Item)>);

impl Table {
    fn get(&self, key: &str) -> Option<&Item> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut Item> {
        self.0.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Replace the value in its place, or append.
    fn insert(&mut self, key: String, value: Item) {
        match self.get_mut(&key) {
            Some(v) => *v = value,
            None => self.0.push((key, value)),
        }
    }

    fn remove(&mut self, key: &str) -> Option<Item> {
        let i = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.remove(i).1)
    }

    fn name(&self) -> Option<&str> {
        match self.get("name") {
            Some(Item::Str(s)) => Some(s),
            _ => None,
        }
    }
}

fn item(value: &DeValue<'_>) -> Item {
    match value {
        DeValue::String(s) => Item::Str(s.to_string()),
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) => Item::Int(n),
            Err(_) => Item::Raw(i.to_string()),
        },
        DeValue::Float(f) => match f.as_str().parse::<f64>() {
            Ok(x) => Item::Float(x, f.as_str().to_owned()),
            Err(_) => Item::Raw(f.as_str().to_owned()),
        },
        DeValue::Boolean(b) => Item::Bool(*b),
        DeValue::Datetime(d) => Item::Raw(d.to_string()),
        DeValue::Array(a) => Item::Array(a.iter().map(|v| item(v.get_ref())).collect()),
        DeValue::Table(t) => Item::Table(table(t)),
    }
}

fn table(t: &DeTable<'_>) -> Table {
    Table(
        t.iter()
            .map(|(k, v)| (k.get_ref().to_string(), item(v.get_ref())))
            .collect(),
    )
}

/// A template as defined.
struct Template {
    name: String,
    /// The file it is defined in.
    origin: Origin,
    included: bool,
    params: Vec<String>,
    defaults: Table,
    body: Table,
}

/// Problems, each blamed on the file its key is in.
#[derive(Default)]
struct Found(Vec<Problem>);

impl Found {
    fn push(&mut self, origin: &Origin, error: TemplateError) {
        self.0.push(Problem {
            blame: Blame::Config(origin.clone()),
            problem: error.to_string(),
        });
    }
}

/// Instantiate the templates of the configuration `source` (already checked by
/// `check_toml`), reading the files it includes.
pub fn expand(
    origin: &Origin,
    source: &str,
    check_toml: fn(&str) -> Result<(), Vec<String>>,
) -> Result<Expansion, Vec<Problem>> {
    let parsed = DeTable::parse(source).map_err(|e| {
        vec![Problem {
            blame: Blame::Config(origin.clone()),
            problem: e.to_string().trim_end().to_owned(),
        }]
    })?;
    let mut root = table(parsed.get_ref());
    let mut found = Found::default();
    let mut reader = Reader {
        templates: Vec::new(),
        names: Vec::new(),
        seen: Vec::new(),
        check_toml,
    };
    let uses_files = root.get("include").is_some() || root.get("template").is_some();
    reader.collect(origin, &mut root, 0, &mut found);
    let templates = reader.templates;
    let mut instances = Vec::new();
    if let Some(Item::Array(modules)) = root.get_mut("module") {
        for (i, m) in modules.iter_mut().enumerate() {
            let Item::Table(m) = m else { continue };
            if let Some(instance) = instantiate(i, m, &templates, origin, &mut found) {
                instances.push(instance);
            }
        }
    }
    if !found.0.is_empty() {
        return Err(found.0);
    }
    let toml = write_document(&root);
    let text = (uses_files || !instances.is_empty()).then(|| toml.clone());
    Ok(Expansion {
        text,
        toml,
        instances,
    })
}

struct Reader {
    templates: Vec<Template>,
    /// Every template name met, and where: names must be unique.
    names: Vec<(String, String)>,
    /// Files included so far (canonical): a file included again is skipped.
    seen: Vec<PathBuf>,
    check_toml: fn(&str) -> Result<(), Vec<String>>,
}

impl Reader {
    /// Take `include` and `template` out of a file's tree, reading what it includes.
    fn collect(&mut self, origin: &Origin, root: &mut Table, depth: usize, found: &mut Found) {
        if let Some(include) = root.remove("include") {
            let paths = match include {
                Item::Array(items) => items
                    .into_iter()
                    .map(|i| match i {
                        Item::Str(s) => Some(s),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>(),
                _ => None,
            };
            match paths {
                Some(paths) => {
                    for (j, path) in paths.iter().enumerate() {
                        self.include(origin, &format!("include[{j}]"), path, depth, found);
                    }
                }
                None => found.push(
                    origin,
                    TemplateError::invalid("include", Reason::IncludeList),
                ),
            }
        }
        if depth > 0 {
            for (key, _) in &root.0 {
                if key != "template" {
                    found.push(
                        origin,
                        TemplateError::invalid(key, Reason::NotATemplateFile),
                    );
                }
            }
        }
        let Some(sections) = root.remove("template") else {
            return;
        };
        let Item::Array(sections) = sections else {
            found.push(
                origin,
                TemplateError::invalid("template", Reason::TemplateSections),
            );
            return;
        };
        for (k, section) in sections.into_iter().enumerate() {
            let Item::Table(section) = section else {
                found.push(
                    origin,
                    TemplateError::invalid(format!("template[{k}]"), Reason::TemplateSections),
                );
                continue;
            };
            if let Some(name) = section.name() {
                let here = format!("{origin}: template[{k}]");
                match self.names.iter().find(|(n, _)| n == name) {
                    Some((_, other)) => found.push(
                        origin,
                        TemplateError::invalid(
                            format!("template[{k}] ({name:?}).name"),
                            Reason::Duplicate {
                                name: name.to_owned(),
                                other: other.clone(),
                            },
                        ),
                    ),
                    None => self.names.push((name.to_owned(), here)),
                }
            }
            if let Some(t) = define(k, section, origin, depth > 0, found) {
                self.templates.push(t);
            }
        }
    }

    fn include(&mut self, origin: &Origin, key: &str, path: &str, depth: usize, found: &mut Found) {
        let base = match origin {
            Origin::File(p) => p.parent().unwrap_or(Path::new("")),
            Origin::Embedded => Path::new(""),
        };
        let path = base.join(path);
        let mut error = |e| found.push(origin, e);
        let key = key.to_owned();
        if depth + 1 > MAX_INCLUDE_DEPTH {
            return error(TemplateError::TooDeep { key, path });
        }
        let canonical = match path.canonicalize() {
            Ok(c) => c,
            Err(source) => return error(TemplateError::Read { key, path, source }),
        };
        if self.seen.contains(&canonical) {
            return;
        }
        if self.seen.len() >= MAX_INCLUDED_FILES {
            return error(TemplateError::TooMany { key, path });
        }
        self.seen.push(canonical);
        let text = match read_bounded(&path) {
            Ok(Some(t)) => t,
            Ok(None) => return error(TemplateError::TooLarge { key, path }),
            Err(source) if source.kind() == std::io::ErrorKind::InvalidInput => {
                return error(TemplateError::NotAFile { key, path })
            }
            Err(source) => return error(TemplateError::Read { key, path, source }),
        };
        let included = Origin::File(path);
        let blame = |problem: String| Problem {
            blame: Blame::Config(included.clone()),
            problem,
        };
        if let Err(problems) = (self.check_toml)(&text) {
            found.0.extend(problems.into_iter().map(blame));
            return;
        }
        match DeTable::parse(&text) {
            Ok(parsed) => {
                let mut root = table(parsed.get_ref());
                self.collect(&included, &mut root, depth + 1, found);
            }
            Err(e) => found.0.push(blame(e.to_string().trim_end().to_owned())),
        }
    }
}

/// The text of a regular file of at most [`MAX_INCLUDE_BYTES`] (`None`: larger); never
/// blocks on a device or pipe (`InvalidInput`: not a regular file).
fn read_bounded(path: &Path) -> std::io::Result<Option<String>> {
    use std::io::Read;
    // Asked before opening: opening a FIFO would wait for a writer.
    if !std::fs::metadata(path)?.is_file() {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    let file = std::fs::File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    let mut text = String::new();
    file.take(MAX_INCLUDE_BYTES + 1).read_to_string(&mut text)?;
    Ok((text.len() as u64 <= MAX_INCLUDE_BYTES).then_some(text))
}

fn is_placeholder_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A template section checked: its name, params, defaults and body.
fn define(
    k: usize,
    mut section: Table,
    origin: &Origin,
    included: bool,
    found: &mut Found,
) -> Option<Template> {
    let before = found.0.len();
    let Some(Item::Str(name)) = section.remove("name") else {
        found.push(
            origin,
            TemplateError::invalid(format!("template[{k}].name"), Reason::NameMissing),
        );
        return None;
    };
    let key = format!("template[{k}] ({name:?})");
    let mut params = Vec::new();
    match section.remove("params") {
        None => {}
        Some(Item::Array(items)) => {
            for p in items {
                match p {
                    Item::Str(p) if !is_placeholder_name(&p) => found.push(
                        origin,
                        TemplateError::invalid(format!("{key}.params"), Reason::ParamName(p)),
                    ),
                    Item::Str(p) if params.contains(&p) => found.push(
                        origin,
                        TemplateError::invalid(format!("{key}.params"), Reason::ParamTwice(p)),
                    ),
                    Item::Str(p) => params.push(p),
                    _ => found.push(
                        origin,
                        TemplateError::invalid(format!("{key}.params"), Reason::ParamsList),
                    ),
                }
            }
        }
        Some(_) => found.push(
            origin,
            TemplateError::invalid(format!("{key}.params"), Reason::ParamsList),
        ),
    }
    let defaults = match section.remove("defaults") {
        None => Table::default(),
        Some(Item::Table(d)) => {
            for (p, _) in &d.0 {
                if !params.contains(p) {
                    found.push(
                        origin,
                        TemplateError::invalid(
                            format!("{key}.defaults.{p}"),
                            Reason::DefaultNotParam(p.clone()),
                        ),
                    );
                }
            }
            d
        }
        Some(_) => {
            found.push(
                origin,
                TemplateError::invalid(format!("{key}.defaults"), Reason::DefaultsTable),
            );
            Table::default()
        }
    };
    for (k, _) in &section.0 {
        let reason = match k.as_str() {
            "template" | "args" => Reason::Nested,
            "link" => Reason::InstanceKey("link"),
            "driver" | "settings" => Reason::InstanceKey("driver and settings"),
            k if BODY_KEYS.contains(&k) => continue,
            _ => Reason::UnknownKey,
        };
        found.push(origin, TemplateError::invalid(format!("{key}.{k}"), reason));
    }
    let mut used = Vec::new();
    for (k, v) in &section.0 {
        scan(v, &format!("{key}.{k}"), &params, &mut used, origin, found);
    }
    for p in &params {
        if !used.contains(p) {
            found.push(
                origin,
                TemplateError::invalid(format!("{key}.params"), Reason::Unused(p.clone())),
            );
        }
    }
    (found.0.len() == before).then_some(Template {
        name,
        origin: origin.clone(),
        included,
        params,
        defaults,
        body: section,
    })
}

/// A piece of a string of a template.
#[derive(Debug, PartialEq)]
enum Piece<'a> {
    Text(&'a str),
    Placeholder(&'a str),
}

/// `"KRDG? ${input}"` → `[Text("KRDG? "), Placeholder("input")]`; `$${` is a literal
/// `${`. `Err` for a `${` without its `}`.
fn pieces(text: &str) -> Result<Vec<Piece<'_>>, Reason> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        if at > 0 && rest[..at].ends_with('$') {
            // `$${`: the text up to and including one `$`, then `{` goes on as text.
            out.push(Piece::Text(&rest[..at]));
            out.push(Piece::Text("{"));
            rest = &rest[at + 2..];
            continue;
        }
        if at > 0 {
            out.push(Piece::Text(&rest[..at]));
        }
        let after = &rest[at + 2..];
        let end = after.find('}').ok_or(Reason::Unclosed)?;
        out.push(Piece::Placeholder(&after[..end]));
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

/// Check the placeholders of every string under `item`, noting the params used.
fn scan(
    item: &Item,
    key: &str,
    params: &[String],
    used: &mut Vec<String>,
    origin: &Origin,
    found: &mut Found,
) {
    match item {
        Item::Str(s) => match pieces(s) {
            Err(reason) => found.push(origin, TemplateError::invalid(key, reason)),
            Ok(pieces) => {
                for piece in pieces {
                    let Piece::Placeholder(name) = piece else {
                        continue;
                    };
                    if params.iter().any(|p| p == name) {
                        if !used.iter().any(|u| u == name) {
                            used.push(name.to_owned());
                        }
                    } else {
                        found.push(
                            origin,
                            TemplateError::invalid(
                                key,
                                Reason::Undeclared {
                                    name: name.to_owned(),
                                    known: listed(params),
                                },
                            ),
                        );
                    }
                }
            }
        },
        Item::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                let label = match v {
                    Item::Table(t) => t.name().map(|n| format!(" ({n:?})")).unwrap_or_default(),
                    _ => String::new(),
                };
                scan(
                    v,
                    &format!("{key}[{i}]{label}"),
                    params,
                    used,
                    origin,
                    found,
                );
            }
        }
        Item::Table(t) => {
            for (k, v) in &t.0 {
                scan(v, &format!("{key}.{k}"), params, used, origin, found);
            }
        }
        _ => {}
    }
}

fn listed(names: &[String]) -> String {
    match names.is_empty() {
        true => "none".to_owned(),
        false => names.join(", "),
    }
}

/// Make module `i` from its template, if it names one.
fn instantiate(
    i: usize,
    module: &mut Table,
    templates: &[Template],
    origin: &Origin,
    found: &mut Found,
) -> Option<Instance> {
    let label = module
        .name()
        .map(|n| format!(" ({n:?})"))
        .unwrap_or_default();
    let key = format!("module[{i}]{label}");
    let template = module.remove("template");
    let args = module.remove("args");
    let template = match (template, args.is_some()) {
        (None, false) => return None,
        (None, true) => {
            found.push(
                origin,
                TemplateError::invalid(format!("{key}.args"), Reason::ArgsWithoutTemplate),
            );
            return None;
        }
        (Some(Item::Str(t)), _) => t,
        (Some(_), _) => {
            found.push(
                origin,
                TemplateError::invalid(format!("{key}.template"), Reason::TemplateName),
            );
            return None;
        }
    };
    let Some(t) = templates.iter().find(|t| t.name == template) else {
        let known: Vec<String> = templates.iter().map(|t| t.name.clone()).collect();
        found.push(
            origin,
            TemplateError::invalid(
                format!("{key}.template"),
                Reason::UnknownTemplate {
                    name: template,
                    known: listed(&known),
                },
            ),
        );
        return None;
    };
    if let Some(Item::Str(driver)) = module.get("driver") {
        found.push(
            origin,
            TemplateError::invalid(format!("{key}.template"), Reason::Driver(driver.clone())),
        );
        return None;
    }
    let given = match args {
        None => Table::default(),
        Some(Item::Table(a)) => a,
        Some(_) => {
            found.push(
                origin,
                TemplateError::invalid(format!("{key}.args"), Reason::ArgsTable),
            );
            return None;
        }
    };
    let before = found.0.len();
    for (name, _) in &given.0 {
        if !t.params.contains(name) {
            found.push(
                origin,
                TemplateError::invalid(
                    format!("{key}.args.{name}"),
                    Reason::UnknownArg {
                        name: name.clone(),
                        template: t.name.clone(),
                        known: listed(&t.params),
                    },
                ),
            );
        }
    }
    let mut args = Table::default();
    for p in &t.params {
        match given.get(p).or_else(|| t.defaults.get(p)) {
            Some(v) => args.0.push((p.clone(), v.clone())),
            None => {
                let needs: Vec<String> = t
                    .params
                    .iter()
                    .filter(|p| t.defaults.get(p).is_none())
                    .cloned()
                    .collect();
                found.push(
                    origin,
                    TemplateError::invalid(
                        format!("{key}.args"),
                        Reason::MissingArg {
                            name: p.clone(),
                            template: t.name.clone(),
                            needs: needs.join(", "),
                        },
                    ),
                );
            }
        }
    }
    if found.0.len() > before {
        return None;
    }
    let body = match substitute(&Item::Table(t.body.clone()), &args) {
        Ok(Item::Table(b)) => b,
        Ok(_) => Table::default(),
        Err((name, text)) => {
            found.push(
                origin,
                TemplateError::invalid(
                    format!("{key}.args.{name}"),
                    Reason::NotText { name, text },
                ),
            );
            return None;
        }
    };
    *module = merge(body, std::mem::take(module));
    Some(Instance {
        module: i,
        name: module.name().unwrap_or_default().to_owned(),
        template: t.name.clone(),
        file: match (&t.origin, t.included) {
            (Origin::File(p), true) => Some(p.clone()),
            _ => None,
        },
        args: args
            .0
            .iter()
            .map(|(k, v)| format!("{} = {}", write_key(k), inline(v)))
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// The template body with its placeholders replaced by `args` (complete: checked at
/// definition and instantiation). `Err((param, text))`: a list or table argument in a
/// longer string.
fn substitute(item: &Item, args: &Table) -> Result<Item, (String, String)> {
    Ok(match item {
        Item::Str(s) => {
            // Checked when the template was defined.
            let Ok(pieces) = pieces(s) else {
                return Ok(item.clone());
            };
            if let [Piece::Placeholder(name)] = pieces.as_slice() {
                if let Some(v) = args.get(name) {
                    return Ok(v.clone());
                }
            }
            let mut text = String::with_capacity(s.len());
            for piece in pieces {
                match piece {
                    Piece::Text(t) => text.push_str(t),
                    Piece::Placeholder(name) => match args.get(name) {
                        Some(Item::Str(v)) => text.push_str(v),
                        Some(Item::Int(n)) => text.push_str(&n.to_string()),
                        Some(Item::Float(_, written)) => text.push_str(written),
                        Some(Item::Bool(b)) => text.push_str(&b.to_string()),
                        Some(Item::Raw(r)) => text.push_str(r),
                        Some(Item::Array(_) | Item::Table(_)) => {
                            return Err((name.to_owned(), s.clone()))
                        }
                        None => {
                            text.push_str("${");
                            text.push_str(name);
                            text.push('}');
                        }
                    },
                }
            }
            Item::Str(text)
        }
        Item::Array(items) => Item::Array(
            items
                .iter()
                .map(|v| substitute(v, args))
                .collect::<Result<_, _>>()?,
        ),
        Item::Table(t) => Item::Table(Table(
            t.0.iter()
                .map(|(k, v)| substitute(v, args).map(|v| (k.clone(), v)))
                .collect::<Result<_, _>>()?,
        )),
        other => other.clone(),
    })
}

/// The module's own keys over the template's: `properties` and `drive` merge key by key;
/// `parameter` and `command` entries replace the template's entry of the same name in its
/// place, others are appended; every other key replaces the template's. Order: the
/// module's `name`, `link` (and anything not a template key), then the template's keys,
/// then the module's further ones.
fn merge(body: Table, mut module: Table) -> Table {
    let mut out = Table::default();
    let (own, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut module.0)
        .into_iter()
        .partition(|(k, _)| !BODY_KEYS.contains(&k.as_str()));
    out.0.extend(own);
    let mut module = Table(rest);
    for (k, t) in body.0 {
        let merged = match (k.as_str(), t, module.remove(&k)) {
            (_, t, None) => t,
            ("properties" | "drive", Item::Table(mut t), Some(Item::Table(m))) => {
                for (mk, mv) in m.0 {
                    t.insert(mk, mv);
                }
                Item::Table(t)
            }
            ("parameter" | "command", Item::Array(mut t), Some(Item::Array(m))) => {
                for entry in m {
                    let name = match &entry {
                        Item::Table(e) => e.name().map(str::to_owned),
                        _ => None,
                    };
                    let same = t.iter_mut().find(|x| match (x, &name) {
                        (Item::Table(x), Some(n)) => x.name() == Some(n.as_str()),
                        _ => false,
                    });
                    match same {
                        Some(x) => *x = entry,
                        None => t.push(entry),
                    }
                }
                Item::Array(t)
            }
            (_, _, Some(m)) => m,
        };
        out.0.push((k, merged));
    }
    out.0.extend(module.0);
    out
}

// ---------------------------------------------------------------------------------
// Writing TOML.

/// The configuration as TOML: top-level sections and their sub-sections
/// (`[[module]]`, `[module.properties]`, `[[module.parameter]]`) as headers, deeper
/// tables inline, every table's keys in their order.
pub fn write_document(root: &Table) -> String {
    let mut out = String::new();
    write_section(&mut out, "", root, false, 0);
    out
}

/// Whether a value at this depth is written as a section of its own.
fn is_section(value: &Item, depth: usize) -> bool {
    depth <= 2
        && match value {
            Item::Table(_) => true,
            Item::Array(items) => {
                !items.is_empty() && items.iter().all(|i| matches!(i, Item::Table(_)))
            }
            _ => false,
        }
}

fn write_section(out: &mut String, path: &str, table: &Table, array: bool, depth: usize) {
    if !path.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        match array {
            true => out.push_str(&format!("[[{path}]]\n")),
            false => out.push_str(&format!("[{path}]\n")),
        }
    }
    for (k, v) in &table.0 {
        if !is_section(v, depth + 1) {
            out.push_str(&format!("{} = {}\n", write_key(k), inline(v)));
        }
    }
    for (k, v) in &table.0 {
        if !is_section(v, depth + 1) {
            continue;
        }
        let sub = match path {
            "" => write_key(k),
            _ => format!("{path}.{}", write_key(k)),
        };
        match v {
            Item::Table(t) => write_section(out, &sub, t, false, depth + 1),
            Item::Array(items) => {
                for i in items {
                    if let Item::Table(t) = i {
                        write_section(out, &sub, t, true, depth + 1);
                    }
                }
            }
            _ => {}
        }
    }
}

fn write_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match bare {
        true => key.to_owned(),
        false => basic_string(key),
    }
}

/// A value on one line.
pub fn inline(value: &Item) -> String {
    match value {
        Item::Str(s) => string(s),
        Item::Int(n) => n.to_string(),
        Item::Float(x, _) if x.is_nan() => "nan".to_owned(),
        Item::Float(x, _) if x.is_infinite() => match *x > 0.0 {
            true => "inf".to_owned(),
            false => "-inf".to_owned(),
        },
        // `{:?}` keeps a fraction or an exponent (1.0, 1e-7): a float again, exactly.
        Item::Float(x, _) => format!("{x:?}"),
        Item::Bool(b) => b.to_string(),
        Item::Raw(r) => r.clone(),
        Item::Array(items) => format!(
            "[{}]",
            items.iter().map(inline).collect::<Vec<_>>().join(", ")
        ),
        Item::Table(t) if t.0.is_empty() => "{}".to_owned(),
        Item::Table(t) => format!(
            "{{ {} }}",
            t.0.iter()
                .map(|(k, v)| format!("{} = {}", write_key(k), inline(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A string as a human writes it: `"..."`, or `'...'` when it holds backslashes or
/// quotes (regular expressions) and a literal string can hold it.
fn string(s: &str) -> String {
    let literal_ok = !s.contains('\'') && !s.chars().any(|c| c.is_control() && c != '\t');
    if (s.contains('\\') || s.contains('"')) && literal_ok {
        return format!("'{s}'");
    }
    basic_string(s)
}

fn basic_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::{load_str, Loaded};
    use serde_json::json;

    const NODE: &str = "[node]\nequipment_id = 'x'\ndescription = 'd'\n\
                        [[link]]\nname = 'l'\nprotocol = 'ascii'\ntcp = '127.0.0.1:9'\n";
    const BUS: &str = "[node]\nequipment_id = 'x'\ndescription = 'd'\n\
                       [[link]]\nname = 'bus'\nprotocol = 'modbus'\ntcp = '127.0.0.1:9'\n";

    const INPUT: &str = "[[template]]\nname = 'input'\nparams = ['input', 'digits']\n\
                         defaults = { digits = 4 }\nclass = 'Readable'\n\
                         description = 'input ${input}'\n\
                         [template.properties]\ngroup = 'inputs'\n\
                         [[template.parameter]]\nname = 'value'\n\
                         datainfo = { type = 'double', unit = 'K', fmtstr = '%.${digits}f' }\n\
                         query = 'KRDG? ${input}'\n\
                         [[template.parameter]]\nname = '_setp'\n\
                         datainfo = { type = 'double' }\nquery = 'SETP? ${input}'\n\
                         write = 'SETP ${input},{value:.3f} {{x}}'\n";

    fn load(text: &str) -> Loaded {
        match load_str(text) {
            Ok(l) => l,
            Err(e) => panic!("{e}\n{text}"),
        }
    }

    fn problems(text: &str) -> String {
        match load_str(text) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    fn parameter(l: &Loaded, module: &str, name: &str) -> serde_json::Value {
        let m = l.config.modules.iter().find(|m| m.name == module).unwrap();
        m.parameter
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap()
    }

    #[test]
    fn modules_from_a_template_are_plain_modules() {
        let mut text = format!("{NODE}{INPUT}");
        for input in ["A", "B", "C"] {
            text.push_str(&format!(
                "[[module]]\nname = 'T_{input}'\nlink = 'l'\ntemplate = 'input'\nargs = {{ input = '{input}' }}\n"
            ));
        }
        let l = load(&text);
        assert_eq!(l.modules.len(), 3);
        assert_eq!(parameter(&l, "T_C", "value")["query"], "KRDG? C");
        assert_eq!(parameter(&l, "T_C", "value")["datainfo"]["fmtstr"], "%.4f");
        // `{value...}` formats and `{{` escapes of write templates are the instrument's.
        assert_eq!(
            parameter(&l, "T_B", "_setp")["write"],
            "SETP B,{value:.3f} {{x}}"
        );
        let b = l.description();
        let b = b.module("T_B").unwrap();
        assert_eq!(b.description, "input B");
        assert_eq!(b.properties["group"], "inputs");
        assert_eq!(l.instances.len(), 3);
        assert_eq!(l.instances[1].args, "input = \"B\", digits = 4");
        assert_eq!(l.instances[1].template, "input");
        assert!(l.expanded.contains("query = \"KRDG? C\""), "{}", l.expanded);
        assert!(!l.expanded.contains("template"), "{}", l.expanded);
        // The expanded text is a configuration of its own, describing the same node.
        let again = load(&l.expanded);
        assert_eq!(again.description().to_json(), l.description().to_json());
        assert!(again.instances.is_empty());
    }

    #[test]
    fn eight_units_on_a_bus() {
        let mut text = format!(
            "{BUS}[[template]]\nname = 'mfc'\nparams = ['unit', 'max']\ndefaults = {{ max = 500 }}\n\
             class = 'Readable'\nunit_id = '${{unit}}'\n\
             [[template.parameter]]\nname = 'value'\n\
             datainfo = {{ type = 'double', min = 0, max = '${{max}}' }}\n\
             table = 'input'\naddress = 0\ntype = 'f32'\n"
        );
        for unit in 1..=8 {
            text.push_str(&format!(
                "[[module]]\nname = 'flow{unit}'\nlink = 'bus'\ntemplate = 'mfc'\nargs = {{ unit = {unit} }}\n"
            ));
        }
        text.push_str("[[module]]\nname = 'big'\nlink = 'bus'\ntemplate = 'mfc'\nargs = { unit = 9, max = 2.5e3 }\n");
        let l = load(&text);
        assert_eq!(l.modules.len(), 9);
        // A placeholder that is the whole value takes the argument's type.
        let units: Vec<_> = l.config.modules.iter().map(|m| m.unit_id).collect();
        assert_eq!(units, (1..=9).map(Some).collect::<Vec<_>>());
        assert_eq!(
            parameter(&l, "flow3", "value")["datainfo"]["max"],
            json!(500)
        );
        assert_eq!(
            parameter(&l, "big", "value")["datainfo"]["max"],
            json!(2500.0)
        );
        assert!(l.expanded.contains("unit_id = 8\n"), "{}", l.expanded);
    }

    #[test]
    fn the_module_overrides_and_extends_its_template() {
        let text = format!(
            "{NODE}{INPUT}[[module]]\nname = 'T'\nlink = 'l'\ntemplate = 'input'\nargs = {{ input = 'A', digits = 2 }}\n\
             description = 'sample'\npollinterval = 5\n\
             [module.properties]\nvisibility = 'w--'\ngroup = 'sample'\n\
             [[module.parameter]]\nname = '_extra'\ndatainfo = {{ type = 'int', min = 0, max = 9 }}\nquery = 'X?'\n\
             [[module.parameter]]\nname = 'value'\ndatainfo = {{ type = 'double', unit = 'mK' }}\nquery = 'MK? A'\n"
        );
        let l = load(&text);
        let m = &l.config.modules[0];
        assert_eq!(m.description.as_deref(), Some("sample"));
        assert_eq!(m.pollinterval, Some(5.0));
        // properties: the template's keys in their place, the module's values; new ones after.
        assert_eq!(
            serde_json::to_string(&m.properties).unwrap(),
            r#"{"group":"sample","visibility":"w--"}"#
        );
        // parameters: same name replaces in place, new names follow.
        let names: Vec<_> = m.parameter.iter().map(|p| p["name"].clone()).collect();
        assert_eq!(names, [json!("value"), json!("_setp"), json!("_extra")]);
        assert_eq!(parameter(&l, "T", "value")["query"], "MK? A");
        assert_eq!(parameter(&l, "T", "value")["datainfo"]["unit"], "mK");
    }

    #[test]
    fn expansion_is_the_same_every_time() {
        let text = format!(
            "{NODE}{INPUT}[[module]]\nname = 'T'\nlink = 'l'\ntemplate = 'input'\nargs = {{ input = 'A' }}\n"
        );
        let first = load(&text);
        for _ in 0..5 {
            let l = load(&text);
            assert_eq!(l.expanded, first.expanded);
            assert_eq!(
                serde_json::to_string(&l.description().to_json()).unwrap(),
                serde_json::to_string(&first.description().to_json()).unwrap()
            );
        }
    }

    #[test]
    fn mistakes_name_the_key_and_the_reason() {
        let module = |args: &str| {
            format!("{NODE}{INPUT}[[module]]\nname = 'T'\nlink = 'l'\ntemplate = 'input'\n{args}\n")
        };
        for (text, expected) in [
            (module("args = { input = 'A', inptu = 'B' }"),
             r#"module[0] ("T").args.inptu: template "input" has no parameter "inptu" (it has input, digits)"#),
            (module(""), r#"module[0] ("T").args: missing "input": template "input" needs input"#),
            (module("args = 'A'"), r#"module[0] ("T").args: must be a table"#),
            (module("args = { input = ['A'] }"),
             r#"module[0] ("T").args.input: a list or table cannot be written into the text "input ${input}""#),
            (format!("{NODE}{INPUT}[[module]]\nname = 'T'\nlink = 'l'\ntemplate = 'inptu'\n"),
             r#"module[0] ("T").template: no template is named "inptu" (there are: input)"#),
            (format!("{NODE}{INPUT}[[module]]\nname = 'T'\ndriver = 'sim_pressure'\ntemplate = 'input'\nargs = {{ input = 'A' }}\n"),
             r#"module[0] ("T").template: templates are for modules on a link, not for driver "sim_pressure""#),
            (format!("{NODE}[[module]]\nname = 'T'\ndriver = 'sim_pressure'\nargs = {{ input = 'A' }}\n"),
             r#"module[0] ("T").args: args without template"#),
            (format!("{NODE}[[template]]\nname = 't'\nparams = ['a', 'b']\nclass = 'Readable'\ndescription = '${{a}} ${{c}}'\n[[module]]\nname = 'p'\ndriver = 'sim_pressure'\n"),
             r#"template[0] ("t").description: ${c} is not one of the template's params (a, b)"#),
            (format!("{NODE}[[template]]\nname = 't'\nparams = ['a', 'b']\nclass = 'Readable'\ndescription = '${{a}}'\n[[module]]\nname = 'p'\ndriver = 'sim_pressure'\n"),
             r#"template[0] ("t").params: "b" is never used in the template"#),
            (format!("{NODE}[[template]]\nname = 't'\nclass = 'Readable'\ntemplate = 'u'\n[[module]]\nname = 'p'\ndriver = 'sim_pressure'\n"),
             r#"template[0] ("t").template: templates cannot use templates"#),
            (format!("{NODE}[[template]]\nname = 't'\nclass = 'Readable'\nlink = 'l'\n[[module]]\nname = 'p'\ndriver = 'sim_pressure'\n"),
             r#"template[0] ("t").link: a template describes the instrument, not where it is: give link on each [[module]]"#),
            (format!("{NODE}[[template]]\nname = 't'\nclas = 'Readable'\n[[module]]\nname = 'p'\ndriver = 'sim_pressure'\n"),
             r#"template[0] ("t").clas: not a key of a template"#),
            (format!("{NODE}[[template]]\nname = 't'\nparams = ['a']\ndefaults = {{ b = 1 }}\ndescription = '${{a}}'\n[[module]]\nname = 'p'\ndriver = 'sim_pressure'\n"),
             r#"template[0] ("t").defaults.b: "b" is not one of params"#),
            (format!("{NODE}[[template]]\nname = 't'\nparams = ['1a']\n[[module]]\nname = 'p'\ndriver = 'sim_pressure'\n"),
             r#"template[0] ("t").params: "1a" is not a placeholder name"#),
            (format!("{NODE}[[template]]\nname = 't'\ndescription = 'x ${{a'\n[[module]]\nname = 'p'\ndriver = 'sim_pressure'\n"),
             r#"template[0] ("t").description: "${" without a closing "}""#),
            (format!("{NODE}[[template]]\nname = 't'\n[[template]]\nname = 't'\n[[module]]\nname = 'p'\ndriver = 'sim_pressure'\n"),
             r#"template[1] ("t").name: another template is named "t" (<text>: template[0])"#),
            (format!("include = 'x.toml'\n{NODE}[[module]]\nname = 'p'\ndriver = 'sim_pressure'\n"),
             "include: must be a list of file names"),
            (format!("include = ['/nonexistent/x.toml']\n{NODE}[[module]]\nname = 'p'\ndriver = 'sim_pressure'\n"),
             "include[0]: /nonexistent/x.toml: cannot read"),
            // The expanded module is validated, and its problems name module and template.
            (module("args = { input = 'A' }\nunit_id = 300"),
             r#"module[0] ("T") from template "input": unit_id: 300 is out of range"#),
            (module("args = { input = 'A' }\n[[module.parameter]]\nname = 'bad'\ndatainfo = { type = 'double' }\nquery = 'B?'"),
             r#"module[0] ("T") from template "input": parameter[2].name: accessible "bad" is not predefined by SECoP"#),
        ] {
            let p = problems(&text);
            assert!(p.contains(expected), "{expected:?} in\n{p}\n{text}");
            assert!(p.starts_with("<text>: "), "{p}");
        }
        // Errors of the drivers name the module and its template too.
        let p = problems(&format!(
            "{NODE}[[template]]\nname = 'w'\nparams = ['n']\nclass = 'Readable'\n\
             [[template.parameter]]\nname = 'value'\ndatainfo = {{ type = 'enum', members = {{ a = 0 }} }}\n\
             query = 'V? ${{n}}'\nwrite = 'V ${{n}},{{value:.2f}}'\n\
             [[module]]\nname = 'v'\nlink = 'l'\ntemplate = 'w'\nargs = {{ n = 1 }}\n"
        ));
        assert!(
            p.contains(r#"link[0] ("l"): module "v" from template "w": parameter[0] ("value").write: {value:.2f}"#),
            "{p}"
        );
    }

    #[test]
    fn placeholders() {
        use Piece::*;
        assert_eq!(
            pieces("KRDG? ${input}").unwrap(),
            vec![Text("KRDG? "), Placeholder("input")]
        );
        assert_eq!(pieces("${base}").unwrap(), vec![Placeholder("base")]);
        assert_eq!(
            pieces("SETP ${loop},{value:.3f} {{x}}").unwrap(),
            vec![
                Text("SETP "),
                Placeholder("loop"),
                Text(",{value:.3f} {{x}}")
            ]
        );
        assert_eq!(
            pieces("a$${x}").unwrap(),
            vec![Text("a$"), Text("{"), Text("x}")]
        );
        assert_eq!(pieces("^(\\d+)$").unwrap(), vec![Text("^(\\d+)$")]);
        assert!(pieces("x ${oops").is_err());
    }

    #[test]
    fn literal_dollar_brace_is_kept() {
        let args = Table(vec![("x".into(), Item::Int(1))]);
        let out = substitute(&Item::Str("a$${x} ${x}".into()), &args).unwrap();
        assert_eq!(out, Item::Str("a${x} 1".into()));
    }

    #[test]
    fn toml_is_written_back_exactly() {
        let text = "top = 1\n[node]\nx = 'a\\b'\ny = \"q\\\"\\n\"\nf = [1.0, 1e-7, 0.0005, -2.5e300]\n\
                    [[module]]\nname = 'm'\n[module.properties]\nmeaning = { function = 'f', importance = 20 }\n\
                    [[module.parameter]]\nname = 'p'\ndatainfo = { type = 'enum', members = { off = 0, on = 1 } }\n\
                    'odd key' = 0x10\nwhen = 1979-05-27T07:32:00Z\n";
        let parsed = DeTable::parse(text).unwrap();
        let root = table(parsed.get_ref());
        let written = write_document(&root);
        let again = DeTable::parse(&written).unwrap();
        assert_eq!(table(again.get_ref()), root, "{written}");
        assert!(written.contains("[[module.parameter]]"), "{written}");
        assert!(written.contains("x = 'a\\b'"), "{written}");
        assert!(
            written.contains("f = [1.0, 1e-7, 0.0005, -2.5e300]"),
            "{written}"
        );
    }
}
