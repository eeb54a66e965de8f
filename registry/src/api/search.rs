//! Hono's search parameters (`pageSize`, `pageOffset`, repeatable `filterJson`, `sortJson`) applied to a
//! list of resources.
//!
//! Filtering runs over the stored JSON bodies in the registry process, so it behaves the same on SQLite and
//! PostgreSQL; a tenant's devices are read once per search. That bounds searches to tenants whose device
//! list fits comfortably in memory (hundreds of thousands); pushing filters into SQL is the next step when a
//! deployment needs more.

use ferry_registry_model::{Filter, Sort};
use serde_json::Value;

use super::extract::QueryPairs;
use crate::error::ApiError;

const DEFAULT_PAGE_SIZE: usize = 30;
const MAX_PAGE_SIZE: usize = 200;

/// A parsed search request.
#[derive(Debug)]
pub struct Search {
    pub page_size: usize,
    pub page_offset: usize,
    pub filters: Vec<Filter>,
    pub sort: Vec<Sort>,
}

impl Search {
    pub fn from_query(q: &QueryPairs) -> Result<Self, ApiError> {
        let page_size = match q.get("pageSize") {
            None => DEFAULT_PAGE_SIZE,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| *n <= MAX_PAGE_SIZE)
                .ok_or_else(|| {
                    ApiError::bad_request(format!("pageSize must be 0–{MAX_PAGE_SIZE}"))
                })?,
        };
        let page_offset = match q.get("pageOffset") {
            None => 0,
            Some(v) => v
                .parse::<usize>()
                .map_err(|_| ApiError::bad_request("pageOffset must be a non-negative integer"))?,
        };
        let filters = q
            .all("filterJson")
            .map(|f| {
                serde_json::from_str::<Filter>(f)
                    .map_err(|e| ApiError::bad_request(format!("invalid filterJson {f}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let sort = q
            .all("sortJson")
            .map(|s| {
                serde_json::from_str::<Sort>(s)
                    .map_err(|e| ApiError::bad_request(format!("invalid sortJson {s}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            page_size,
            page_offset,
            filters,
            sort,
        })
    }

    /// Filters, sorts (by the given keys, then by id) and pages `items`; returns the total of matches and
    /// the page. Each item must carry its `id`.
    pub fn apply(&self, items: Vec<Value>) -> (usize, Vec<Value>) {
        let mut matching: Vec<Value> = items
            .into_iter()
            .filter(|doc| self.filters.iter().all(|f| f.matches(doc)))
            .collect();
        matching.sort_by(|a, b| {
            self.sort
                .iter()
                .map(|s| s.compare(a, b))
                .find(|o| o.is_ne())
                .unwrap_or_else(|| {
                    a.get("id")
                        .map(Value::to_string)
                        .cmp(&b.get("id").map(Value::to_string))
                })
        });
        let total = matching.len();
        let page = matching
            .into_iter()
            .skip(self.page_offset)
            .take(self.page_size)
            .collect();
        (total, page)
    }
}
