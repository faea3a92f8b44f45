//! `labelSelector` and `fieldSelector`: [`Filter`] parsed from a list or watch request and
//! matched against objects.

use std::collections::HashSet;

use serde_json::Value;

use super::ApiError;

/// `labelSelector` and `fieldSelector` of a list or watch, plus the namespace of the URL.
#[derive(Clone, Debug, Default)]
pub(crate) struct Filter {
    pub namespace: Option<String>,
    labels: Vec<LabelReq>,
    fields: Vec<(String, bool, String)>,
}

#[derive(Clone, Debug)]
enum LabelReq {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    NotExists(String),
    In(String, HashSet<String>),
    NotIn(String, HashSet<String>),
}

impl Filter {
    /// Parses the selectors as the real server does: equality (`k=v`, `k==v`, `k!=v`),
    /// existence (`k`, `!k`) and set-based (`k in (a,b)`, `k notin (a,b)`) label requirements,
    /// comma-separated; `metadata.name` and `metadata.namespace` field requirements.
    pub(crate) fn parse(
        namespace: Option<String>,
        label_selector: Option<&str>,
        field_selector: Option<&str>,
    ) -> Result<Filter, ApiError> {
        let mut filter = Filter {
            namespace,
            ..Filter::default()
        };
        for term in split_top_level(label_selector.unwrap_or("")) {
            filter.labels.push(parse_label_req(&term)?);
        }
        for term in field_selector.unwrap_or("").split(',') {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let (key, eq, value) = if let Some((k, v)) = term.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = term.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = term.split_once('=') {
                (k, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector: '{term}'"
                )));
            };
            let key = key.trim();
            if key != "metadata.name" && key != "metadata.namespace" {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {key}"
                )));
            }
            filter
                .fields
                .push((key.to_owned(), eq, value.trim().to_owned()));
        }
        Ok(filter)
    }

    /// Whether `obj` is in the URL's namespace and matches both selectors.
    pub(crate) fn matches(&self, obj: &Value) -> bool {
        let meta = &obj["metadata"];
        let ns = meta["namespace"].as_str().unwrap_or("");
        if self.namespace.as_deref().is_some_and(|want| want != ns) {
            return false;
        }
        let name = meta["name"].as_str().unwrap_or("");
        let fields_ok = self.fields.iter().all(|(key, eq, value)| {
            let actual = if key == "metadata.name" { name } else { ns };
            (actual == value) == *eq
        });
        let labels = meta["labels"].as_object();
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        fields_ok
            && self.labels.iter().all(|req| match req {
                LabelReq::Eq(k, v) => label(k) == Some(v.as_str()),
                LabelReq::Ne(k, v) => label(k) != Some(v.as_str()),
                LabelReq::Exists(k) => label(k).is_some(),
                LabelReq::NotExists(k) => label(k).is_none(),
                LabelReq::In(k, set) => label(k).is_some_and(|v| set.contains(v)),
                LabelReq::NotIn(k, set) => label(k).is_none_or(|v| !set.contains(v)),
            })
    }
}

/// Splits a label selector at commas outside parentheses (`a in (x,y),b` is two terms).
fn split_top_level(s: &str) -> Vec<String> {
    let mut terms = Vec::new();
    let mut depth = 0usize;
    let mut current = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    terms.push(current);
    terms
        .into_iter()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect()
}

fn parse_label_req(term: &str) -> Result<LabelReq, ApiError> {
    let bad = || ApiError::bad_request(format!("unable to parse requirement: {term:?}"));
    let set = |rest: &str| -> Result<HashSet<String>, ApiError> {
        let inner = rest
            .trim()
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .ok_or_else(bad)?;
        Ok(inner.split(',').map(|v| v.trim().to_owned()).collect())
    };
    if let Some(key) = term.strip_prefix('!') {
        return Ok(LabelReq::NotExists(key.trim().to_owned()));
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(LabelReq::Ne(k.trim().to_owned(), v.trim().to_owned()));
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(LabelReq::Eq(k.trim().to_owned(), v.trim().to_owned()));
    }
    if let Some((k, rest)) = term.split_once(" notin ") {
        return Ok(LabelReq::NotIn(k.trim().to_owned(), set(rest)?));
    }
    if let Some((k, rest)) = term.split_once(" in ") {
        return Ok(LabelReq::In(k.trim().to_owned(), set(rest)?));
    }
    if term.contains(char::is_whitespace) || term.contains(['(', ')', '<', '>']) {
        return Err(bad());
    }
    Ok(LabelReq::Exists(term.to_owned()))
}
