//! JSON helpers of the store: object keys, metadata access, type and status stripping,
//! timestamps, and JSON merge / strategic merge patches ([`merge_patch`]).

use std::{
    collections::{HashMap, HashSet},
    time::{SystemTime, UNIX_EPOCH},
};

use serde_json::{json, Map, Value};

use super::{Key, Resource};

pub(super) fn default(map: &mut Map<String, Value>, key: &str, value: Value) {
    if map.get(key).is_none_or(Value::is_null) {
        map.insert(key.into(), value);
    }
}

pub(super) fn key(res: Resource, ns: &str, name: &str) -> Key {
    let ns = if res.namespaced() { ns } else { "" };
    (ns.to_owned(), name.to_owned())
}

pub(super) fn ns_name(obj: &Value) -> Key {
    let meta = &obj["metadata"];
    (
        meta["namespace"].as_str().unwrap_or("").to_owned(),
        meta["name"].as_str().unwrap_or("").to_owned(),
    )
}

/// `obj.metadata` as a map, created (and `obj` turned into an object) if needed.
pub(crate) fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = json!({});
    }
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    match obj.get_mut("metadata").and_then(Value::as_object_mut) {
        Some(meta) => meta,
        None => unreachable!("metadata was just made an object"),
    }
}

/// The object without kind/apiVersion (how items appear in a list).
pub(super) fn without_type(obj: &Value) -> Value {
    let mut obj = obj.clone();
    if let Some(map) = obj.as_object_mut() {
        map.remove("kind");
        map.remove("apiVersion");
    }
    obj
}

/// The object without metadata and status: what `generation` tracks.
pub(super) fn strip_meta_status(obj: &Value) -> Value {
    let mut obj = obj.clone();
    if let Some(map) = obj.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    obj
}

/// Linear probing over `0..count` from FNV-1a(`key`) mod `count` (the static source's scheme).
pub(super) fn probe<T>(
    key: &str,
    count: u64,
    mut accept: impl FnMut(u64) -> Option<T>,
) -> Option<T> {
    if count == 0 {
        return None;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key.as_bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let start = hash % count;
    (0..count).find_map(|k| accept((start + k) % count))
}

/// The current time as RFC 3339 UTC with second precision (`metadata.creationTimestamp`).
pub(crate) fn rfc3339_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// RFC 7386 JSON merge patch, extended with the parts of strategic merge patch that
/// `kubectl apply` sends for our kinds: `$`-directives are dropped, and lists with a merge key
/// (`spec.ports` of a Service, keyed by `port`) merge element-wise, honouring
/// `$setElementOrder/<field>` and `{"$patch": "delete"}` elements. Other lists are replaced.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value, strategic: bool, path: &str) {
    let Some(patch_map) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if strategic && patch_map.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replaced = patch.clone();
        if let Some(m) = replaced.as_object_mut() {
            m.remove("$patch");
        }
        *target = replaced;
        return;
    }
    if !target.is_object() {
        *target = json!({});
    }
    let Some(target_map) = target.as_object_mut() else {
        return;
    };
    for (k, v) in patch_map {
        if k.starts_with('$') {
            continue;
        }
        let child = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        if v.is_null() {
            target_map.remove(k);
            continue;
        }
        let merge_key = (strategic && child == "spec.ports").then_some("port");
        match (merge_key, v.as_array()) {
            (Some(mk), Some(items)) => {
                let order = patch_map
                    .get(&format!("$setElementOrder/{k}"))
                    .and_then(Value::as_array);
                let current = target_map
                    .get(k)
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                target_map.insert(k.clone(), merge_keyed_list(current, items, order, mk));
            }
            _ => {
                let slot = target_map.entry(k.clone()).or_insert(Value::Null);
                if v.is_object() {
                    merge_patch(slot, v, strategic, &child);
                } else {
                    *slot = v.clone();
                }
            }
        }
    }
}

fn merge_keyed_list(
    current: Vec<Value>,
    patch: &[Value],
    order: Option<&Vec<Value>>,
    mk: &str,
) -> Value {
    let mut by_key: HashMap<String, Value> = HashMap::new();
    let mut keys: Vec<String> = Vec::new();
    for item in current {
        let k = item[mk].to_string();
        keys.push(k.clone());
        by_key.insert(k, item);
    }
    for item in patch {
        let k = item[mk].to_string();
        if item["$patch"].as_str() == Some("delete") {
            by_key.remove(&k);
            continue;
        }
        let slot = by_key.entry(k.clone()).or_insert_with(|| {
            keys.push(k.clone());
            json!({})
        });
        merge_patch(slot, item, true, "");
    }
    if let Some(order) = order {
        let ordered: Vec<String> = order.iter().map(|o| o[mk].to_string()).collect();
        keys.sort_by_key(|k| ordered.iter().position(|o| o == k).unwrap_or(usize::MAX));
    }
    let mut seen = HashSet::new();
    Value::Array(
        keys.into_iter()
            .filter(|k| seen.insert(k.clone()))
            .filter_map(|k| by_key.remove(&k))
            .collect(),
    )
}
