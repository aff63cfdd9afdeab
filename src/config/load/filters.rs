//! A job's `filters`: the giosg filter language as the API takes it, checked where it is written.
//!
//! Owns: turning the located YAML tree of `filters` into a [`Filter`] (expanding `${VAR}` in
//! string values), pointing each problem at the filter node it is about (serde's errors at the
//! innermost filter that fails, [`Filter::validate`]'s by the path in its message), and the rule
//! that `scope` is not filtered here: chatetl adds the `scope` selector from `scopes`.

use serde::Deserialize;
use serde_json::Value;
use serde_saphyr::{Location, Spanned};

use super::ctx::Ctx;
use super::raw::Node;
use crate::query::Filter;

const ROOT: &str = "filters";

/// The validated filter, or `None` after reporting every problem found.
pub(super) fn filter(
    ctx: &mut Ctx,
    root: &Spanned<Node>,
    dimensions: &[(&str, crate::query::DimensionKind)],
) -> Option<Filter> {
    let json = to_json(ctx, root, ROOT)?;
    let start = ctx.diagnostics.len();
    let filter = deserialize(ctx, root, &json, ROOT);
    if let Some(filter) = &filter {
        let mut problems = Vec::new();
        filter.validate_in(ROOT, dimensions, &mut problems);
        for problem in problems {
            let path = problem.split_once(": ").map_or(ROOT, |(path, _)| path);
            ctx.error(locate(root, path), "", problem);
        }
        reject_scope(ctx, root, filter, ROOT);
    }
    // The filter language's messages quote values; one from the environment is named instead.
    let mut values = Vec::new();
    env_values(ctx, root, &mut values);
    for diagnostic in &mut ctx.diagnostics[start..] {
        for (name, value) in &values {
            for quoted in [format!("`{value}`"), format!("\"{value}\"")] {
                diagnostic.message = diagnostic.message.replace(&quoted, &format!("the value of ${{{name}}}"));
            }
        }
    }
    filter.filter(|_| ctx.diagnostics.len() == start)
}

/// Every variable (with its value) that the environment gave a string of `node`.
fn env_values(ctx: &Ctx, node: &Spanned<Node>, out: &mut Vec<(String, String)>) {
    match &node.value {
        Node::Str(s) => out.extend(ctx.env_values(s)),
        Node::Seq(items) => items.iter().for_each(|item| env_values(ctx, item, out)),
        Node::Map(entries) => entries.iter().for_each(|(_, value)| env_values(ctx, value, out)),
        _ => {}
    }
}

/// The JSON value the API would receive, with `${VAR}` expanded in string values.
fn to_json(ctx: &mut Ctx, node: &Spanned<Node>, path: &str) -> Option<Value> {
    match &node.value {
        Node::Null => Some(Value::Null),
        Node::Bool(b) => Some(Value::Bool(*b)),
        Node::Int(n) => {
            let number = i64::try_from(*n).map(Value::from).or_else(|_| u64::try_from(*n).map(Value::from));
            if number.is_err() {
                ctx.error(node.referenced, path, format!("the number {n} is too large"));
            }
            number.ok()
        }
        Node::Float(f) => {
            let number = serde_json::Number::from_f64(*f).map(Value::Number);
            if number.is_none() {
                ctx.error(node.referenced, path, format!("expected a finite number, found `{f}`"));
            }
            number
        }
        Node::Str(s) => ctx.expand(path, node.referenced, s).map(Value::String),
        Node::Seq(items) => {
            let values: Vec<Option<Value>> =
                items.iter().enumerate().map(|(i, item)| to_json(ctx, item, &format!("{path}[{i}]"))).collect();
            values.into_iter().collect::<Option<Vec<Value>>>().map(Value::Array)
        }
        Node::Map(entries) => {
            let values: Vec<Option<(String, Value)>> = entries
                .iter()
                .map(|(key, value)| {
                    let value = to_json(ctx, value, &format!("{path}.{}", key.value))?;
                    Some((key.value.clone(), value))
                })
                .collect();
            values.into_iter().collect::<Option<serde_json::Map<String, Value>>>().map(Value::Object)
        }
    }
}

/// `json` (the value of `node`) as a [`Filter`]; on failure the problem is reported at the
/// innermost filters that fail (every failing operand of an `and`/`or`, the operand of a `not`),
/// or at `node` itself.
fn deserialize(ctx: &mut Ctx, node: &Spanned<Node>, json: &Value, path: &str) -> Option<Filter> {
    let error = match Filter::deserialize(json) {
        Ok(filter) => return Some(filter),
        Err(error) => error,
    };
    let operands: Vec<(&Spanned<Node>, &Value, String)> = match json.get("type").and_then(Value::as_str) {
        Some("and" | "or") => match (node.value.get("fields").map(|n| &n.value), json.get("fields")) {
            (Some(Node::Seq(nodes)), Some(Value::Array(values))) => {
                nodes.iter().zip(values).enumerate().map(|(i, (n, v))| (n, v, format!("{path}.fields[{i}]"))).collect()
            }
            _ => Vec::new(),
        },
        Some("not") => match (node.value.get("field"), json.get("field")) {
            (Some(n), Some(v)) => vec![(n, v, format!("{path}.field"))],
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    let mut operand_failed = false;
    for (n, v, p) in operands {
        operand_failed |= deserialize(ctx, n, v, &p).is_none();
    }
    if !operand_failed {
        ctx.error(node.referenced, path, error);
    }
    None
}

/// Where the value at `path` (`filters.fields[1].dimension`) is written: the deepest node of the
/// path that exists.
fn locate(root: &Spanned<Node>, path: &str) -> Location {
    let mut node = root;
    let mut rest = path.strip_prefix(ROOT).unwrap_or("");
    while !rest.is_empty() {
        let next = if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            rest = &after[end..];
            node.value.get(&after[..end])
        } else if let Some(after) = rest.strip_prefix('[') {
            let end = after.find(']').unwrap_or(after.len());
            let index = after[..end].parse::<usize>().ok();
            rest = after.get(end + 1..).unwrap_or("");
            match (&node.value, index) {
                (Node::Seq(items), Some(i)) => items.get(i),
                _ => None,
            }
        } else {
            None
        };
        match next {
            Some(next) => node = next,
            None => break,
        }
    }
    node.referenced
}

/// Reports every filter on the `scope` dimension: chatetl adds that selector itself.
fn reject_scope(ctx: &mut Ctx, root: &Spanned<Node>, filter: &Filter, path: &str) {
    match filter {
        Filter::Selector { dimension, .. } | Filter::Bound { dimension, .. } => {
            if dimension == "scope" {
                let message = "filtering on `scope` is not allowed: chatetl adds the scope selector itself; \
                               list the scopes in `scopes` instead (e.g. `scopes: [org, team]`)";
                ctx.error(locate(root, path), path, message);
            }
        }
        Filter::And { fields } | Filter::Or { fields } => {
            for (i, f) in fields.iter().enumerate() {
                reject_scope(ctx, root, f, &format!("{path}.fields[{i}]"));
            }
        }
        Filter::Not { field } => reject_scope(ctx, root, field, &format!("{path}.field")),
    }
}
