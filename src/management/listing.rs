//! RabbitMQ's listing conventions for every `GET` of a list: `sort` (a field, dotted paths
//! allowed) and `sort_reverse`, `columns` (the fields to keep), and with `page` the paged
//! shape (`filtered_count`, `item_count`, `items`, `page`, `page_count`, `page_size`,
//! `total_count`) filtered by `name` (case-insensitive substring, or a regex with
//! `use_regex=true`). Without `page`, RabbitMQ 3.10.8 ignores `name` (recorded).

use super::error;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::cmp::Ordering;

/// The query parameters of a list.
#[derive(Deserialize, Default, Debug)]
#[serde(default)]
pub(super) struct ListQuery {
    page: Option<String>,
    page_size: Option<String>,
    name: Option<String>,
    use_regex: Option<String>,
    sort: Option<String>,
    sort_reverse: Option<String>,
    columns: Option<String>,
}

const MAX_PAGE_SIZE: usize = 500;

fn field<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

fn compare(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        _ => Ordering::Equal,
    }
}

/// Keep only `columns` (dotted paths keep the nested field).
fn project(item: &Value, columns: &[&str]) -> Value {
    let mut out = Map::new();
    for c in columns {
        let Some(v) = field(item, c) else { continue };
        let mut parts: Vec<&str> = c.split('.').collect();
        let last = parts.pop().unwrap_or_default();
        let mut obj = &mut out;
        for p in parts {
            obj = obj
                .entry(p.to_string())
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .expect("an object just inserted");
        }
        obj.insert(last.to_string(), v.clone());
    }
    Value::Object(out)
}

impl ListQuery {
    /// The list as RabbitMQ answers it.
    pub(super) fn respond(&self, mut items: Vec<Value>) -> Response {
        let truthy = |v: &Option<String>| v.as_deref() == Some("true");
        if let Some(key) = self.sort.as_deref().filter(|s| !s.is_empty()) {
            items.sort_by(|a, b| compare(field(a, key), field(b, key)));
        }
        if truthy(&self.sort_reverse) {
            items.reverse();
        }
        let columns: Vec<&str> = self
            .columns
            .as_deref()
            .map(|c| c.split(',').filter(|c| !c.is_empty()).collect())
            .unwrap_or_default();
        let shape = |items: Vec<Value>| -> Vec<Value> {
            if columns.is_empty() {
                items
            } else {
                items.iter().map(|i| project(i, &columns)).collect()
            }
        };
        let Some(page) = &self.page else {
            return axum::Json(shape(items)).into_response();
        };
        let bad = |reason: &str| error(StatusCode::BAD_REQUEST, "bad_request", reason);
        let Ok(page) = page.parse::<usize>() else {
            return bad("Pagination parameters are invalid");
        };
        let page_size = match &self.page_size {
            None => 100,
            Some(s) => match s.parse::<usize>() {
                Ok(n) => n,
                Err(_) => return bad("Pagination parameters are invalid"),
            },
        };
        if page == 0 || page_size == 0 || page_size > MAX_PAGE_SIZE {
            let size = match &self.page_size {
                Some(_) => page_size.to_string(),
                None => "undefined".into(),
            };
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_pagination_parameters",
                &format!("Invalid pagination parameters: page number {page}, page size {size}"),
            );
        }
        let total = items.len();
        if let Some(name) = self.name.as_deref().filter(|n| !n.is_empty()) {
            if truthy(&self.use_regex) {
                let Ok(re) = regex::Regex::new(name) else {
                    return bad("Invalid regex in name parameter");
                };
                items.retain(|i| {
                    field(i, "name")
                        .and_then(Value::as_str)
                        .is_some_and(|n| re.is_match(n))
                });
            } else {
                let needle = name.to_lowercase();
                items.retain(|i| {
                    field(i, "name")
                        .and_then(Value::as_str)
                        .is_some_and(|n| n.to_lowercase().contains(&needle))
                });
            }
        }
        let filtered = items.len();
        let page_count = filtered.div_ceil(page_size).max(1);
        if page > page_count {
            return error(
                StatusCode::BAD_REQUEST,
                "page_out_of_range",
                &format!("Page out of range, page: {page} page size: {page_size}, len: {filtered}"),
            );
        }
        let items: Vec<Value> = items
            .into_iter()
            .skip((page - 1) * page_size)
            .take(page_size)
            .collect();
        let items = shape(items);
        axum::Json(json!({
            "filtered_count": filtered,
            "item_count": items.len(),
            "items": items,
            "page": page,
            "page_count": page_count,
            "page_size": page_size,
            "total_count": total,
        }))
        .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_keeps_nested_columns() {
        let item = json!({"name": "q", "message_stats": {"publish": 3, "ack": 1}, "x": 1});
        assert_eq!(
            project(&item, &["name", "message_stats.publish"]),
            json!({"name": "q", "message_stats": {"publish": 3}})
        );
    }

    #[test]
    fn sorts_numbers_numerically() {
        let a = json!({"messages": 10});
        let b = json!({"messages": 9});
        assert_eq!(
            compare(field(&a, "messages"), field(&b, "messages")),
            Ordering::Greater
        );
    }
}
