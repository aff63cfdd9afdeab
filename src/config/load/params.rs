//! An endpoint's own job-file keys ([`EndpointParams`]): one arm per endpoint of the registry
//! (`config/endpoint.rs`), each reading and checking the keys that endpoint lists.

use serde_saphyr::{Location, Spanned};

use super::ctx::Ctx;
use super::job::string_list;
use super::raw::RawJob;
use crate::config::{AggregateBy, Endpoint, EndpointParams, WindowUnit, WorkflowCondition};

/// The endpoint's own keys.
pub(super) fn endpoint_params(
    ctx: &mut Ctx,
    at: Location,
    r: &RawJob,
    endpoint: Endpoint,
    window: Option<WindowUnit>,
) -> Option<EndpointParams> {
    let flag = |v: &Option<Spanned<bool>>| v.as_ref().is_some_and(|v| v.value);
    match endpoint {
        Endpoint::ChatSessions => Some(EndpointParams::ChatSessions),
        Endpoint::Events => {
            let vendor = match &r.vendor {
                None => Some("com.giosg.chat".to_string()),
                Some(v) => {
                    ctx.non_empty("vendor", v, "an event vendor, e.g. com.giosg.chat").map(|v| v.trim().to_string())
                }
            };
            let sources = match &r.event_sources {
                None => Some(vec!["trusted".to_string()]),
                Some(list) if list.value.is_empty() => {
                    ctx.error(list.referenced, "event_sources", "expected at least one event source, e.g. trusted");
                    None
                }
                Some(_) => string_list(ctx, "event_sources", r.event_sources.as_ref(), "an event source"),
            };
            Some(EndpointParams::Events { vendor: vendor?, sources: sources? })
        }
        Endpoint::Workflow => {
            let list = ctx.required(at, "where", &r.conditions, "a list of `field` and `search`")?;
            if list.value.is_empty() {
                ctx.error(list.referenced, "where", "expected at least one condition");
                return None;
            }
            let mut conditions = Some(Vec::new());
            for (i, c) in list.value.iter().enumerate() {
                let path = |k: &str| format!("where[{i}].{k}");
                let field = ctx
                    .required(c.referenced, &path("field"), &c.value.field, "the field matched, e.g. category")
                    .and_then(|v| ctx.non_empty(&path("field"), v, "a field name"));
                let search = ctx
                    .required(c.referenced, &path("search"), &c.value.search, "the value matched (\"\" for empty)")
                    .and_then(|v| ctx.text(&path("search"), v));
                match (field, search, &mut conditions) {
                    (Some(field), Some(search), Some(out)) => {
                        out.push(WorkflowCondition { field: field.trim().to_string(), search })
                    }
                    _ => conditions = None,
                }
            }
            Some(EndpointParams::Workflow { conditions: conditions? })
        }
        Endpoint::ChatSummary => {
            let options = AggregateBy::ALL;
            let aggregate_by = match &r.aggregate_by {
                None => window.map(|w| if w == WindowUnit::Hour { AggregateBy::Hour } else { AggregateBy::Day }),
                Some(v) => ctx.choice("aggregate_by", v, "aggregate_by", &options).and_then(|a| {
                    if window == Some(WindowUnit::Hour) && matches!(a, AggregateBy::Day | AggregateBy::HourOfDay) {
                        let message = format!("`{}` buckets do not fit in an hour window", a.as_str());
                        ctx.error(v.referenced, "aggregate_by", message);
                        return None;
                    }
                    Some(a)
                }),
            };
            let user_logins = string_list(ctx, "user_logins", r.user_logins.as_ref(), "a user login");
            let chat_queue_ids = match &r.chat_queue_ids {
                None => Some(Vec::new()),
                Some(list) => {
                    let mut out = Some(Vec::new());
                    for (i, item) in list.value.iter().enumerate() {
                        let id = ctx.integer(&format!("chat_queue_ids[{i}]"), Some(item), 0, u64::from(u32::MAX), 0);
                        match (id, &mut out) {
                            (Some(id), Some(out)) => out.push(id.to_string()),
                            _ => out = None,
                        }
                    }
                    out
                }
            };
            let response_threshold = match &r.response_threshold {
                None => Some(None),
                Some(v) => ctx.integer("response_threshold", Some(v), 1, 86_400, 20).map(|n| Some(n as u32)),
            };
            let page_size = ctx.integer("page_size", r.page_size.as_ref(), 1, 100, 100).map(|n| n as u32);
            let split_by_login = flag(&r.split_by_login);
            if split_by_login && user_logins.as_ref().is_some_and(Vec::is_empty) {
                let at = r.split_by_login.as_ref().map_or(at, |v| v.referenced);
                ctx.error(at, "split_by_login", "needs `user_logins`: one request is sent per login");
                return None;
            }
            if split_by_login && flag(&r.sum_users) {
                let at = r.split_by_login.as_ref().map_or(at, |v| v.referenced);
                ctx.error(
                    at,
                    "split_by_login",
                    "cannot be combined with `sum_users: true` (one row per request either way; use one of them)",
                );
                return None;
            }
            Some(EndpointParams::ChatSummary {
                aggregate_by: aggregate_by?,
                user_logins: user_logins?,
                chat_queue_ids: chat_queue_ids?,
                sum_users: flag(&r.sum_users),
                response_threshold: response_threshold?,
                split_by_login,
                page_size: page_size?,
            })
        }
        Endpoint::RealtimeRooms => Some(EndpointParams::RealtimeRooms { include_shared: flag(&r.include_shared) }),
        Endpoint::RealtimeUsers => {
            let user_ids = string_list(ctx, "user_ids", r.user_ids.as_ref(), "a user id")?;
            Some(EndpointParams::RealtimeUsers { user_ids })
        }
        Endpoint::Agents => {
            let department_id = match &r.department_id {
                None => Some(None),
                Some(v) => ctx.non_empty("department_id", v, "a department id").map(|v| Some(v.trim().to_string())),
            };
            let page_size = ctx.integer("page_size", r.page_size.as_ref(), 1, 1000, 100).map(|n| n as u32);
            Some(EndpointParams::Agents {
                department_id: department_id?,
                include_status_distribution: flag(&r.include_status_distribution),
                page_size: page_size?,
            })
        }
        Endpoint::Queue | Endpoint::Today | Endpoint::RightNow => Some(EndpointParams::None),
    }
}
