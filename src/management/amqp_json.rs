//! AMQP field tables and message properties as RabbitMQ's management API writes them in
//! JSON, and back: JSON arguments and properties of HTTP requests become AMQP values (integers
//! as signed 64-bit, floats as doubles, strings as long strings, lists as arrays, objects as
//! tables).

use crate::args::as_int;
use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use serde_json::{Map, Value, json};

/// A field table as RabbitMQ's management API shows it.
pub(crate) fn table_json(t: &FieldTable) -> Value {
    Value::Object(
        t.inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), value_json(v)))
            .collect(),
    )
}

/// One field value as JSON.
pub(crate) fn value_json(v: &AMQPValue) -> Value {
    if let Some(i) = as_int(v) {
        return json!(i);
    }
    match v {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::Float(f) => json!(f),
        AMQPValue::Double(f) => json!(f),
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_json).collect()),
        AMQPValue::FieldTable(t) => table_json(t),
        AMQPValue::Timestamp(t) => json!(t),
        AMQPValue::ByteArray(b) => json!(String::from_utf8_lossy(b.as_slice())),
        AMQPValue::DecimalValue(d) => json!(d.value as f64 / 10f64.powi(d.scale as i32)),
        _ => Value::Null,
    }
}

/// A JSON value as an AMQP field value.
pub(crate) fn json_value(v: &Value) -> AMQPValue {
    match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes().to_vec())),
        Value::Array(a) => AMQPValue::FieldArray(FieldArray::from(
            a.iter().map(json_value).collect::<Vec<_>>(),
        )),
        Value::Object(o) => AMQPValue::FieldTable(json_table(o)),
    }
}

/// A JSON object as a field table.
pub(crate) fn json_table(o: &Map<String, Value>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in o {
        t.insert(ShortString::from(k.as_str()), json_value(v));
    }
    t
}

/// JSON `arguments` (absent or null: none); anything but an object is an error.
pub(crate) fn arguments(v: Option<&Value>) -> Result<FieldTable, String> {
    match v {
        None | Some(Value::Null) => Ok(FieldTable::default()),
        Some(Value::Object(o)) => Ok(json_table(o)),
        Some(_) => Err("arguments should be a JSON object".into()),
    }
}

/// Message properties as `POST /api/queues/.../get` shows them: only those set.
pub(crate) fn properties_json(p: &BasicProperties) -> Value {
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.to_string(), v);
        }
    };
    let s = |x: &Option<ShortString>| x.as_ref().map(|s| json!(s.as_str()));
    put("content_type", s(p.content_type()));
    put("content_encoding", s(p.content_encoding()));
    put("headers", p.headers().as_ref().map(table_json));
    put("delivery_mode", p.delivery_mode().map(|d| json!(d)));
    put("priority", p.priority().map(|d| json!(d)));
    put("correlation_id", s(p.correlation_id()));
    put("reply_to", s(p.reply_to()));
    put("expiration", s(p.expiration()));
    put("message_id", s(p.message_id()));
    put("timestamp", p.timestamp().map(|d| json!(d)));
    put("type", s(p.kind()));
    put("user_id", s(p.user_id()));
    put("app_id", s(p.app_id()));
    put("cluster_id", s(p.cluster_id()));
    Value::Object(m)
}

/// `properties` of `POST /api/exchanges/.../publish`.
pub(crate) fn json_properties(v: Option<&Value>) -> Result<BasicProperties, String> {
    let mut p = BasicProperties::default();
    let Some(v) = v else { return Ok(p) };
    let Some(o) = v.as_object() else {
        return Err("properties should be a JSON object".into());
    };
    let text = |k: &str| -> Option<ShortString> {
        o.get(k).map(|v| match v {
            Value::String(s) => ShortString::from(s.as_str()),
            other => ShortString::from(other.to_string()),
        })
    };
    let int = |k: &str| o.get(k).and_then(Value::as_u64);
    if let Some(x) = text("content_type") {
        p = p.with_content_type(x);
    }
    if let Some(x) = text("content_encoding") {
        p = p.with_content_encoding(x);
    }
    if let Some(h) = o.get("headers").and_then(Value::as_object) {
        p = p.with_headers(json_table(h));
    }
    if let Some(d) = int("delivery_mode") {
        p = p.with_delivery_mode(d.min(255) as u8);
    }
    if let Some(d) = int("priority") {
        p = p.with_priority(d.min(255) as u8);
    }
    if let Some(x) = text("correlation_id") {
        p = p.with_correlation_id(x);
    }
    if let Some(x) = text("reply_to") {
        p = p.with_reply_to(x);
    }
    if let Some(x) = text("expiration") {
        p = p.with_expiration(x);
    }
    if let Some(x) = text("message_id") {
        p = p.with_message_id(x);
    }
    if let Some(t) = int("timestamp") {
        p = p.with_timestamp(t);
    }
    if let Some(x) = text("type") {
        p = p.with_type(x);
    }
    if let Some(x) = text("user_id") {
        p = p.with_user_id(x);
    }
    if let Some(x) = text("app_id") {
        p = p.with_app_id(x);
    }
    if let Some(x) = text("cluster_id") {
        p = p.with_cluster_id(x);
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_through_field_tables() {
        let v = json!({"x-int": 42, "x-str": "v", "x-bool": true, "x-list": [1, "a"],
                       "x-table": {"k": "v"}, "x-float": 1.5});
        let t = json_table(v.as_object().unwrap());
        assert_eq!(table_json(&t), v);
    }

    #[test]
    fn properties_show_only_what_is_set() {
        let p = json_properties(Some(&json!({"delivery_mode": 2, "headers": {"a": 1},
                                             "content_type": "text/plain"})))
        .unwrap();
        assert_eq!(
            properties_json(&p),
            json!({"delivery_mode": 2, "headers": {"a": 1}, "content_type": "text/plain"})
        );
    }
}
