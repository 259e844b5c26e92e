//! Mapping rules: which cache entries a row change invalidates.
//!
//! A [`Rule`] binds a table to a namespace. The row's key comes from a [`Template`] over its columns (default: the
//! table's `PRIMARY KEY` columns in key order joined by `:` — the key the cache uses — read from the catalog by
//! the consumer and handed over with [`Mapping::set_primary_keys`]; never the replica-identity columns, which under
//! `REPLICA IDENTITY FULL` are every column), its tags from more templates (`"category:{category_id}"`), and its
//! version from a version column, or else the transaction's commit LSN. A table may have several rules (the
//! `product` table feeds the `product` namespace by key and the `listing` namespace by tag).
//!
//! Default keys are the cache's keys as they come: pgoutput sends values in text format, and PostgreSQL's text
//! output of an integer (`42`, `-7`), text or varchar (as stored) and uuid (lowercase hyphenated) column is exactly
//! the canonical key form `strata_sql` accepts for that column (`strata_sql::schema`; checked against the
//! database in `strata-sql/tests/keys.rs`), so an event for row 42 evicts `42`, the only key row 42 is cached
//! under.
//!
//! Invariant: a change is never mapped to *less* than it invalidates. When a rule needs a value the change does
//! not carry — the old category of an updated row without `REPLICA IDENTITY FULL`, an unchanged TOASTed column, a
//! version that is not a number — the whole namespace of that rule is cleared instead, and the change is counted
//! as unmapped. [`Mapping::tag_columns`] names the columns tag templates read, so the
//! consumer's set-up can make PostgreSQL send the whole old row.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Deserialize;

use crate::pgoutput::{Datum, OldKind, Relation};

/// An invalid mapping configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CDC rule {rule} ({table}): {problem}")]
pub struct ConfigError {
    /// The rule's position in the list (0-based).
    pub rule: usize,
    /// The rule's table.
    pub table: String,
    /// What is wrong.
    pub problem: String,
}

/// Literal text with `{column}` placeholders; `{{` and `}}` stand for braces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Col(String),
}

impl Template {
    /// Parses a template; errors name the position.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = s.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|p| p.1) == Some('{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek().map(|p| p.1) == Some('}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some((_, '}')) => break,
                            Some((_, c)) if c != '{' => name.push(c),
                            _ => return Err(format!("template {s:?}: unclosed `{{` at byte {i}")),
                        }
                    }
                    if name.trim().is_empty() {
                        return Err(format!("template {s:?}: empty `{{}}` at byte {i}"));
                    }
                    if !lit.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut lit)));
                    }
                    parts.push(Part::Col(name.trim().to_owned()));
                }
                '}' => return Err(format!("template {s:?}: unmatched `}}` at byte {i}")),
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        if parts.is_empty() {
            return Err("template is empty".into());
        }
        Ok(Self {
            source: s.to_owned(),
            parts,
        })
    }

    /// The columns the template reads.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Col(c) => Some(c.as_str()),
            Part::Lit(_) => None,
        })
    }

    fn render(&self, row: &Image<'_>) -> Rendered {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(l) => out.push_str(l),
                Part::Col(c) => match row.get(c) {
                    Value::Text(v) => out.push_str(v),
                    Value::Null => return Rendered::Null,
                    Value::Unknown(why) => return Rendered::Unknown(why),
                },
            }
        }
        Rendered::Text(out)
    }
}

/// One mapping rule, as written in configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// `schema.table`, or `table` for the `public` schema.
    pub table: String,
    /// The namespace whose entries the table feeds.
    pub namespace: String,
    /// The key template. Default: the table's `PRIMARY KEY` columns (in key order) joined by `:`; a table without
    /// a primary key needs one.
    #[serde(default)]
    pub key: Option<String>,
    /// Tag templates; each change invalidates the tags of the old and the new row.
    #[serde(default)]
    pub tags: Vec<String>,
    /// A numeric column holding the row's version. Default: the commit LSN is the version.
    #[serde(default)]
    pub version_column: Option<String>,
    /// The namespace's `hot_keys.l2_replicas`: replicas are tombstoned with the key.
    #[serde(default)]
    pub l2_replicas: u8,
}

impl Rule {
    /// A rule for `table` feeding `namespace`, keyed by the primary key, versioned by commit LSN.
    pub fn new(table: impl Into<String>, namespace: impl Into<String>) -> Self {
        Self {
            table: table.into(),
            namespace: namespace.into(),
            key: None,
            tags: Vec::new(),
            version_column: None,
            l2_replicas: 0,
        }
    }

    /// Sets the key template.
    pub fn key(mut self, template: impl Into<String>) -> Self {
        self.key = Some(template.into());
        self
    }

    /// Adds a tag template.
    pub fn tag(mut self, template: impl Into<String>) -> Self {
        self.tags.push(template.into());
        self
    }

    /// Sets the version column.
    pub fn version_column(mut self, column: impl Into<String>) -> Self {
        self.version_column = Some(column.into());
        self
    }
}

#[derive(Debug, Clone)]
struct Compiled {
    /// The rule's `table`, as written (for errors).
    table: String,
    namespace: String,
    key: Option<Template>,
    tags: Vec<Template>,
    version_column: Option<String>,
    replicas: u8,
}

/// The compiled rules, indexed by table.
#[derive(Debug, Clone, Default)]
pub struct Mapping {
    rules: Vec<Compiled>,
    by_table: HashMap<(String, String), Vec<usize>>,
    /// The primary-key columns per table, in key order (empty: the table has none).
    primary_keys: HashMap<(String, String), Vec<String>>,
    /// Namespaces that take every tag any rule invalidates (see [`Mapping::mirror_tags`]).
    mirrors: Vec<String>,
}

/// A row change, as the mapping sees it.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// A new row.
    Insert {
        /// The row.
        new: &'a [Datum],
    },
    /// A changed row; `old` when PostgreSQL sent one.
    Update {
        /// The old image.
        old: Option<(OldKind, &'a [Datum])>,
        /// The new row.
        new: &'a [Datum],
    },
    /// A deleted row.
    Delete {
        /// The old image.
        old: (OldKind, &'a [Datum]),
    },
}

/// What one transaction invalidates, deduplicated per namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// Per namespace.
    pub namespaces: BTreeMap<String, NsChanges>,
}

/// What a transaction invalidates in one namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NsChanges {
    /// The whole namespace (a generation bump); when set, keys and tags are moot.
    pub clear: bool,
    /// Keys with the newest version seen in the transaction.
    pub keys: BTreeMap<String, Option<u64>>,
    /// Tags.
    pub tags: BTreeSet<String>,
    /// L2 replicas per key.
    pub replicas: u8,
}

impl Batch {
    /// Invalidates one key.
    pub fn key(&mut self, ns: &str, key: String, version: Option<u64>, replicas: u8) {
        let e = self.namespaces.entry(ns.to_owned()).or_default();
        e.replicas = e.replicas.max(replicas);
        let slot = e.keys.entry(key).or_insert(version);
        *slot = (*slot).max(version);
    }

    /// Invalidates a tag.
    pub fn tag(&mut self, ns: &str, tag: String) {
        self.namespaces
            .entry(ns.to_owned())
            .or_default()
            .tags
            .insert(tag);
    }

    /// Clears a namespace.
    pub fn clear(&mut self, ns: &str) {
        self.namespaces.entry(ns.to_owned()).or_default().clear = true;
    }

    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
    }

    /// Folds `other` into this batch.
    pub fn merge(&mut self, other: Batch) {
        for (ns, c) in other.namespaces {
            if c.clear {
                self.clear(&ns);
            }
            for (k, v) in c.keys {
                self.key(&ns, k, v, c.replicas);
            }
            for t in c.tags {
                self.tag(&ns, t);
            }
        }
    }
}

/// Why a rule could not map a change (its namespace is cleared instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmapped {
    /// The rule's namespace.
    pub namespace: String,
    /// What was missing or wrong.
    pub reason: String,
}

enum Value<'a> {
    Text(&'a str),
    Null,
    Unknown(String),
}

enum Rendered {
    Text(String),
    Null,
    Unknown(String),
}

/// One row image with its relation, for template rendering.
struct Image<'a> {
    rel: &'a Relation,
    values: &'a [Datum],
    /// Only the key columns are real (an old image of kind `Key`).
    key_only: bool,
    /// Where to look for unchanged TOASTed values (the old full image).
    fallback: Option<&'a Image<'a>>,
}

impl Image<'_> {
    fn get(&self, column: &str) -> Value<'_> {
        let Some(i) = self.rel.columns.iter().position(|c| c.name == column) else {
            return Value::Unknown(format!(
                "column {column:?} is not in {}.{}",
                self.rel.schema, self.rel.name
            ));
        };
        if self.key_only && !self.rel.columns[i].key {
            return Value::Unknown(format!(
                "the old row carries only key columns, not {column:?} (set REPLICA IDENTITY FULL)"
            ));
        }
        match self.values.get(i) {
            Some(Datum::Text(s)) => Value::Text(s),
            Some(Datum::Null) => Value::Null,
            Some(Datum::Unchanged) => match self.fallback {
                Some(f) => f.get(column),
                None => Value::Unknown(format!("column {column:?} is an unchanged TOASTed value")),
            },
            Some(Datum::Binary(_)) => {
                Value::Unknown(format!("column {column:?} is in binary format"))
            }
            None => Value::Unknown(format!(
                "the row has {} values, the relation {} columns",
                self.values.len(),
                self.rel.columns.len()
            )),
        }
    }
}

fn split_table(t: &str) -> (String, String) {
    match t.split_once('.') {
        Some((s, n)) => (s.to_owned(), n.to_owned()),
        None => ("public".to_owned(), t.to_owned()),
    }
}

impl Mapping {
    /// Compiles and validates the rules.
    pub fn new(rules: &[Rule]) -> Result<Self, ConfigError> {
        let mut m = Mapping::default();
        for (i, r) in rules.iter().enumerate() {
            let fail = |problem: String| ConfigError {
                rule: i,
                table: r.table.clone(),
                problem,
            };
            let (schema, table) = split_table(&r.table);
            if schema.is_empty() || table.is_empty() || table.contains('.') {
                return Err(fail("`table` must be `table` or `schema.table`".into()));
            }
            if r.namespace.trim().is_empty() {
                return Err(fail("`namespace` must not be empty".into()));
            }
            if r.l2_replicas > 16 {
                return Err(fail(format!(
                    "`l2_replicas` = {} (at most 16)",
                    r.l2_replicas
                )));
            }
            if r.version_column
                .as_deref()
                .is_some_and(|c| c.trim().is_empty())
            {
                return Err(fail("`version_column` must not be empty".into()));
            }
            let key = r
                .key
                .as_deref()
                .map(Template::parse)
                .transpose()
                .map_err(|e| fail(format!("`key`: {e}")))?;
            let tags = r
                .tags
                .iter()
                .map(|t| Template::parse(t).map_err(|e| fail(format!("`tags`: {e}"))))
                .collect::<Result<Vec<_>, _>>()?;
            m.by_table
                .entry((schema, table))
                .or_default()
                .push(m.rules.len());
            m.rules.push(Compiled {
                table: r.table.clone(),
                namespace: r.namespace.clone(),
                key,
                tags,
                version_column: r.version_column.clone(),
                replicas: r.l2_replicas,
            });
        }
        Ok(m)
    }

    /// Every tag a rule invalidates is invalidated in `namespaces` too (the edge proxy's namespace: one tag covers
    /// cached rows and proxied pages). A change a rule cannot map clears them with the rule's namespace, since its
    /// tags are not known.
    pub fn mirror_tags(&mut self, namespaces: impl IntoIterator<Item = String>) {
        self.mirrors.extend(namespaces);
    }

    /// Sets the tables' `PRIMARY KEY` columns (in key order; empty for a table without one), as read from the
    /// catalog. Default keys are built from them; a table not listed has no known key, and a rule without a key
    /// template then clears its namespace on every change of the table. See [`Mapping::check_keys`].
    pub fn set_primary_keys(&mut self, keys: HashMap<(String, String), Vec<String>>) {
        self.primary_keys = keys;
    }

    /// The primary-key columns of a table, when known.
    pub fn primary_key(&self, schema: &str, table: &str) -> Option<&[String]> {
        self.primary_keys
            .get(&(schema.to_owned(), table.to_owned()))
            .map(Vec::as_slice)
    }

    /// Every rule without a key template has a table with a primary key; the error names the first that has not.
    pub fn check_keys(&self) -> Result<(), ConfigError> {
        for (i, rule) in self.rules.iter().enumerate() {
            let (schema, table) = split_table(&rule.table);
            if rule.key.is_some()
                || self
                    .primary_key(&schema, &table)
                    .is_some_and(|k| !k.is_empty())
            {
                continue;
            }
            return Err(self.rule_error(
                i,
                format!(
                    "table {schema}.{table} has no PRIMARY KEY, so there is no default key: give the rule a \
                     `key` template (the key the namespace's entries are cached under)"
                ),
            ));
        }
        Ok(())
    }

    /// An error about the first rule of a table (`None` when the table is not mapped).
    pub fn table_error(&self, schema: &str, table: &str, problem: String) -> Option<ConfigError> {
        let &i = self
            .by_table
            .get(&(schema.to_owned(), table.to_owned()))?
            .iter()
            .min()?;
        Some(self.rule_error(i, problem))
    }

    fn rule_error(&self, i: usize, problem: String) -> ConfigError {
        ConfigError {
            rule: i,
            table: self.rules[i].table.clone(),
            problem,
        }
    }

    /// Every namespace a rule feeds.
    pub fn namespaces(&self) -> BTreeSet<String> {
        self.rules.iter().map(|r| r.namespace.clone()).collect()
    }

    /// Every mapped table as `(schema, table)`.
    pub fn tables(&self) -> BTreeSet<(String, String)> {
        self.by_table.keys().cloned().collect()
    }

    /// The namespaces fed by a table (empty when unmapped).
    pub fn namespaces_of(&self, schema: &str, table: &str) -> BTreeSet<String> {
        self.by_table
            .get(&(schema.to_owned(), table.to_owned()))
            .into_iter()
            .flatten()
            .map(|&i| self.rules[i].namespace.clone())
            .collect()
    }

    /// The columns (per table) that tag templates read, which PostgreSQL sends for old rows only under
    /// `REPLICA IDENTITY FULL`. The set-up compares them with the table's key columns.
    pub fn tag_columns(&self, schema: &str, table: &str) -> BTreeSet<String> {
        self.by_table
            .get(&(schema.to_owned(), table.to_owned()))
            .into_iter()
            .flatten()
            .flat_map(|&i| self.rules[i].tags.iter().flat_map(|t| t.columns()))
            .map(str::to_owned)
            .collect()
    }

    /// Maps one change of `rel` into `out`. Returns the rules that could not map it (their namespaces were
    /// cleared in `out`); an unmapped table maps to nothing.
    pub fn map(
        &self,
        rel: &Relation,
        change: Change<'_>,
        lsn: u64,
        out: &mut Batch,
    ) -> Vec<Unmapped> {
        let mut unmapped = Vec::new();
        let Some(rules) = self.by_table.get(&(rel.schema.clone(), rel.name.clone())) else {
            return unmapped;
        };
        let update_without_old = matches!(change, Change::Update { old: None, .. });
        let (old, new) = match change {
            Change::Insert { new } => (None, Some(new)),
            Change::Update { old, new } => (old, Some(new)),
            Change::Delete { old } => (Some(old), None),
        };
        let old_img = old.map(|(kind, values)| Image {
            rel,
            values,
            key_only: kind == OldKind::Key,
            fallback: None,
        });
        let new_img = new.map(|values| Image {
            rel,
            values,
            key_only: false,
            fallback: old_img.as_ref().filter(|o| !o.key_only),
        });
        for &i in rules {
            let rule = &self.rules[i];
            let mut local = Batch::default();
            match map_rule(
                rule,
                rel,
                self.primary_key(&rel.schema, &rel.name),
                old_img.as_ref(),
                new_img.as_ref(),
                lsn,
                update_without_old,
                &mut local,
            ) {
                Ok(()) => {
                    if let Some(c) = local.namespaces.get(&rule.namespace) {
                        let tags: Vec<String> = c.tags.iter().cloned().collect();
                        for m in &self.mirrors {
                            for t in &tags {
                                local.tag(m, t.clone());
                            }
                        }
                    }
                    out.merge(local)
                }
                Err(reason) => {
                    out.clear(&rule.namespace);
                    for m in &self.mirrors {
                        out.clear(m);
                    }
                    unmapped.push(Unmapped {
                        namespace: rule.namespace.clone(),
                        reason,
                    });
                }
            }
        }
        unmapped
    }
}

/// The primary-key values joined by `:`. Not the replica-identity columns of the message: under `REPLICA IDENTITY
/// FULL` PostgreSQL marks every column as one.
fn default_key(rel: &Relation, pk: Option<&[String]>, img: &Image<'_>) -> Result<String, String> {
    let keys = match pk {
        Some(k) if !k.is_empty() => k,
        Some(_) => {
            return Err(format!(
                "{}.{} has no PRIMARY KEY: give the rule a `key` template",
                rel.schema, rel.name
            ))
        }
        None => {
            return Err(format!(
                "the primary key of {}.{} is not known (it is read from the catalog when the consumer starts)",
                rel.schema, rel.name
            ))
        }
    };
    let mut parts = Vec::with_capacity(keys.len());
    for k in keys {
        match img.get(k) {
            Value::Text(v) => parts.push(v.to_owned()),
            Value::Null => return Err(format!("key column {k:?} is NULL")),
            Value::Unknown(why) => return Err(why),
        }
    }
    Ok(parts.join(":"))
}

fn key_of(
    rule: &Compiled,
    rel: &Relation,
    pk: Option<&[String]>,
    img: &Image<'_>,
) -> Result<String, String> {
    match &rule.key {
        None => default_key(rel, pk, img),
        Some(t) => match t.render(img) {
            Rendered::Text(k) if !k.is_empty() => Ok(k),
            Rendered::Text(_) => Err(format!("key template {:?} rendered empty", t.source)),
            Rendered::Null => Err(format!("key template {:?} reads a NULL", t.source)),
            Rendered::Unknown(why) => Err(why),
        },
    }
}

#[allow(clippy::too_many_arguments)]
fn map_rule(
    rule: &Compiled,
    rel: &Relation,
    pk: Option<&[String]>,
    old: Option<&Image<'_>>,
    new: Option<&Image<'_>>,
    lsn: u64,
    update_without_old: bool,
    out: &mut Batch,
) -> Result<(), String> {
    let ns = &rule.namespace;
    let version = match (&rule.version_column, new) {
        (None, Some(_)) => Some(lsn),
        (None, None) => None,
        (Some(col), Some(img)) => match img.get(col) {
            Value::Text(v) => Some(v.trim().parse::<u64>().map_err(|_| {
                format!("version column {col:?} holds {v:?}, not a non-negative integer")
            })?),
            Value::Null => None,
            Value::Unknown(why) => return Err(why),
        },
        // A delete leaves no version: the tombstone fences by time.
        (Some(_), None) => None,
    };
    let mut keys = Vec::with_capacity(2);
    if let Some(img) = new {
        keys.push(key_of(rule, rel, pk, img)?);
    }
    if let Some(img) = old {
        // An update's old image is sent when the key changed (or with FULL identity): both keys go.
        let k = key_of(rule, rel, pk, img)?;
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    for k in keys {
        out.key(ns, k, version, rule.replicas);
    }
    for t in &rule.tags {
        for img in [new, old].into_iter().flatten() {
            match t.render(img) {
                Rendered::Text(tag) if !tag.is_empty() => out.tag(ns, tag),
                // A NULL column means the row carries no such tag.
                Rendered::Text(_) | Rendered::Null => {}
                Rendered::Unknown(why) => return Err(format!("tag {:?}: {why}", t.source)),
            }
        }
        // An update without an old image keeps its key, but a tag over non-key columns may have changed.
        if update_without_old && reads_non_key(rel, t) {
            return Err(format!(
                "tag {:?} reads non-key columns and the update carries no old row (set REPLICA IDENTITY FULL)",
                t.source
            ));
        }
    }
    Ok(())
}

fn reads_non_key(rel: &Relation, t: &Template) -> bool {
    t.columns()
        .any(|c| !rel.columns.iter().any(|col| col.name == c && col.key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgoutput::Column;

    fn rel() -> Relation {
        let col = |name: &str, key| Column {
            key,
            name: name.into(),
            type_oid: 25,
        };
        Relation {
            oid: 1,
            schema: "shop".into(),
            name: "product".into(),
            replica_identity: b'd',
            columns: vec![
                col("id", true),
                col("category", false),
                col("version", false),
            ],
        }
    }

    fn t(s: &str) -> Datum {
        Datum::Text(s.into())
    }

    /// `shop.product`'s primary key is `id`.
    fn keyed(mut m: Mapping) -> Mapping {
        m.set_primary_keys(HashMap::from([(
            ("shop".to_owned(), "product".to_owned()),
            vec!["id".to_owned()],
        )]));
        m.check_keys().unwrap();
        m
    }

    fn mapping() -> Mapping {
        keyed(
            Mapping::new(&[
                Rule::new("shop.product", "product").version_column("version"),
                Rule::new("shop.product", "listing")
                    .key("p{{{id}}}")
                    .tag("category:{category}"),
            ])
            .unwrap(),
        )
    }

    fn ns<'b>(b: &'b Batch, ns: &str) -> &'b NsChanges {
        b.namespaces.get(ns).expect("namespace in batch")
    }

    #[test]
    fn templates_parse_and_reject_what_they_cannot_render() {
        let tpl = Template::parse("p{{{id}}}:{ cat }").unwrap();
        assert_eq!(tpl.columns().collect::<Vec<_>>(), vec!["id", "cat"]);
        for bad in ["", "{", "a{b", "a}", "{}", "{ }"] {
            assert!(Template::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_update_with_the_full_old_row_invalidates_keys_and_both_tags() {
        let m = mapping();
        let old = [t("7"), t("tv"), t("3")];
        let new = [t("7"), t("audio"), t("4")];
        let mut b = Batch::default();
        let un = m.map(
            &rel(),
            Change::Update {
                old: Some((OldKind::Full, &old)),
                new: &new,
            },
            900,
            &mut b,
        );
        assert!(un.is_empty(), "{un:?}");
        assert_eq!(ns(&b, "product").keys.get("7"), Some(&Some(4)));
        let listing = ns(&b, "listing");
        assert!(listing.keys.contains_key("p{7}"));
        assert_eq!(
            listing.tags.iter().cloned().collect::<Vec<_>>(),
            vec!["category:audio", "category:tv"]
        );
        assert!(!listing.clear);
    }

    #[test]
    fn mirrored_namespaces_take_every_tag_and_are_cleared_when_tags_are_unknown() {
        let mut m = mapping();
        m.mirror_tags(["_edge".to_string()]);
        let (old, new) = ([t("7"), t("tv"), t("3")], [t("7"), t("audio"), t("4")]);
        let mut b = Batch::default();
        let change = Change::Update {
            old: Some((OldKind::Full, &old)),
            new: &new,
        };
        assert!(m.map(&rel(), change, 900, &mut b).is_empty());
        let edge = ns(&b, "_edge");
        assert_eq!(
            edge.tags.iter().cloned().collect::<Vec<_>>(),
            vec!["category:audio", "category:tv"]
        );
        assert!(edge.keys.is_empty() && !edge.clear);
        // Without the old row the listing's tags are unknown: the mirror goes with it.
        let mut b = Batch::default();
        let change = Change::Update {
            old: None,
            new: &new,
        };
        assert_eq!(m.map(&rel(), change, 900, &mut b).len(), 1);
        assert!(ns(&b, "_edge").clear);
        // A mapping without mirrors never names one.
        let mut b = Batch::default();
        let change = Change::Update {
            old: Some((OldKind::Full, &old)),
            new: &new,
        };
        mapping().map(&rel(), change, 900, &mut b);
        assert!(!b.namespaces.contains_key("_edge"));
    }

    #[test]
    fn a_tag_over_non_key_columns_without_the_old_row_clears_that_namespace_only() {
        let m = mapping();
        let new = [t("7"), t("audio"), t("4")];
        let mut b = Batch::default();
        let un = m.map(
            &rel(),
            Change::Update {
                old: None,
                new: &new,
            },
            900,
            &mut b,
        );
        assert_eq!(un.len(), 1);
        assert_eq!(un[0].namespace, "listing");
        assert!(
            un[0].reason.contains("REPLICA IDENTITY FULL"),
            "{}",
            un[0].reason
        );
        assert!(ns(&b, "listing").clear);
        assert!(!ns(&b, "product").clear);
        // An insert has no old row to miss.
        let mut b = Batch::default();
        assert!(m
            .map(&rel(), Change::Insert { new: &new }, 900, &mut b)
            .is_empty());
        assert!(ns(&b, "listing").tags.contains("category:audio"));
    }

    #[test]
    fn a_delete_with_only_the_key_invalidates_the_key_and_clears_where_tags_are_unknown() {
        let m = mapping();
        let old = [t("7"), Datum::Null, Datum::Null];
        let mut b = Batch::default();
        let un = m.map(
            &rel(),
            Change::Delete {
                old: (OldKind::Key, &old),
            },
            900,
            &mut b,
        );
        assert_eq!(ns(&b, "product").keys.get("7"), Some(&None));
        assert_eq!(un.len(), 1);
        assert!(ns(&b, "listing").clear);
    }

    #[test]
    fn versions_fall_back_to_the_commit_lsn_and_bad_versions_clear() {
        let m = keyed(Mapping::new(&[Rule::new("shop.product", "product")]).unwrap());
        let new = [t("7"), t("tv"), t("x")];
        let mut b = Batch::default();
        m.map(&rel(), Change::Insert { new: &new }, 900, &mut b);
        assert_eq!(ns(&b, "product").keys.get("7"), Some(&Some(900)));

        let m = keyed(
            Mapping::new(&[Rule::new("shop.product", "product").version_column("version")])
                .unwrap(),
        );
        let mut b = Batch::default();
        let un = m.map(&rel(), Change::Insert { new: &new }, 900, &mut b);
        assert!(un[0].reason.contains("not a non-negative integer"));
        assert!(ns(&b, "product").clear);
    }

    #[test]
    fn default_keys_are_the_primary_key_even_when_every_column_is_identity() {
        // REPLICA IDENTITY FULL: pgoutput flags every column as part of the identity.
        let mut full = rel();
        full.replica_identity = b'f';
        for c in &mut full.columns {
            c.key = true;
        }
        let m = mapping();
        let old = [t("7"), t("tv"), t("3")];
        let new = [t("7"), t("audio"), t("4")];
        let mut b = Batch::default();
        let un = m.map(
            &full,
            Change::Update {
                old: Some((OldKind::Full, &old)),
                new: &new,
            },
            900,
            &mut b,
        );
        assert!(un.is_empty(), "{un:?}");
        let keys: Vec<&String> = ns(&b, "product").keys.keys().collect();
        assert_eq!(keys, vec!["7"], "the key the cache uses, not every column");
        let mut b = Batch::default();
        m.map(
            &full,
            Change::Delete {
                old: (OldKind::Full, &old),
            },
            901,
            &mut b,
        );
        assert_eq!(ns(&b, "product").keys.keys().collect::<Vec<_>>(), vec!["7"]);

        // A composite primary key, in key order (not column order).
        let mut m = Mapping::new(&[Rule::new("shop.product", "product")]).unwrap();
        m.set_primary_keys(HashMap::from([(
            ("shop".to_owned(), "product".to_owned()),
            vec!["category".to_owned(), "id".to_owned()],
        )]));
        let mut b = Batch::default();
        m.map(&full, Change::Insert { new: &new }, 1, &mut b);
        assert_eq!(
            ns(&b, "product").keys.keys().collect::<Vec<_>>(),
            vec!["audio:7"]
        );
    }

    #[test]
    fn a_table_without_a_primary_key_needs_a_key_template() {
        let mut m = Mapping::new(&[
            Rule::new("shop.product", "listing").key("p{id}"),
            Rule::new("shop.product", "product"),
        ])
        .unwrap();
        m.set_primary_keys(HashMap::from([(
            ("shop".to_owned(), "product".to_owned()),
            Vec::new(),
        )]));
        let e = m.check_keys().unwrap_err();
        assert_eq!((e.rule, e.table.as_str()), (1, "shop.product"));
        assert!(e.to_string().contains("no PRIMARY KEY"), "{e}");
        assert!(e.to_string().contains("`key` template"), "{e}");
        // Had it started anyway, the rule would clear its namespace rather than guess a key.
        let mut b = Batch::default();
        let un = m.map(
            &rel(),
            Change::Insert {
                new: &[t("7"), t("tv"), t("3")],
            },
            1,
            &mut b,
        );
        assert_eq!(un.len(), 1);
        assert!(ns(&b, "product").clear);
        assert!(ns(&b, "listing").keys.contains_key("p7"));
        // With a template for every rule, no key is needed.
        let mut m = Mapping::new(&[Rule::new("shop.product", "listing").key("p{id}")]).unwrap();
        m.set_primary_keys(HashMap::new());
        m.check_keys().unwrap();
    }

    #[test]
    fn unchanged_toast_values_come_from_the_old_row_or_clear() {
        let m = mapping();
        let old = [t("7"), t("tv"), t("3")];
        let new = [t("7"), Datum::Unchanged, t("4")];
        let mut b = Batch::default();
        let un = m.map(
            &rel(),
            Change::Update {
                old: Some((OldKind::Full, &old)),
                new: &new,
            },
            1,
            &mut b,
        );
        assert!(un.is_empty());
        assert!(ns(&b, "listing").tags.contains("category:tv"));
        let mut b = Batch::default();
        let un = m.map(&rel(), Change::Insert { new: &new }, 1, &mut b);
        assert_eq!(un.len(), 1);
        assert!(un[0].reason.contains("TOAST"));
    }

    #[test]
    fn batches_keep_the_newest_version_and_unmapped_tables_map_to_nothing() {
        let mut b = Batch::default();
        b.key("p", "k".into(), Some(3), 0);
        b.key("p", "k".into(), Some(9), 2);
        b.key("p", "k".into(), Some(5), 0);
        assert_eq!(ns(&b, "p").keys.get("k"), Some(&Some(9)));
        assert_eq!(ns(&b, "p").replicas, 2);
        let mut other = rel();
        other.name = "elsewhere".into();
        let mut b = Batch::default();
        let new = [t("7"), t("tv"), t("3")];
        assert!(mapping()
            .map(&other, Change::Insert { new: &new }, 1, &mut b)
            .is_empty());
        assert!(b.is_empty());
    }

    #[test]
    fn config_errors_name_the_rule() {
        let e = Mapping::new(&[Rule::new("a.b.c", "x")]).unwrap_err();
        assert_eq!(e.rule, 0);
        let e = Mapping::new(&[Rule::new("t", "x"), Rule::new("t", " ")]).unwrap_err();
        assert_eq!(e.rule, 1);
        assert!(e.to_string().contains("namespace"));
        let mut r = Rule::new("t", "x");
        r.l2_replicas = 17;
        assert!(Mapping::new(&[r])
            .unwrap_err()
            .problem
            .contains("l2_replicas"));
        let r: Rule = serde_json::from_str(
            r#"{"table":"shop.product","namespace":"listing","tags":["category:{category}"]}"#,
        )
        .unwrap();
        assert_eq!(r.tags.len(), 1);
        assert!(
            serde_json::from_str::<Rule>(r#"{"table":"t","namespace":"n","tagz":[]}"#).is_err()
        );
    }
}
