//! `deploy list` with filters the API does not have yet (`--project`, `--environment`,
//! `--status`): the client walks the API's pages and keeps the matches, and still hands out a
//! `next_cursor` that resumes right after the last deployment it looked at.

use std::future::Future;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::client::Failure;
use crate::api::deployments::MAX_PAGE_SIZE;

/// One page, as the API sends it; the items are kept as sent.
#[derive(Debug, Serialize, Deserialize)]
pub struct Page {
    /// The deployments on it, newest first.
    pub items: Vec<Box<RawValue>>,
    /// Where the next page starts; `None` on the last.
    pub next_cursor: Option<String>,
}

/// What `--project`, `--environment` and `--status` ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// `project` must equal it.
    pub project: Option<String>,
    /// `environment` must equal it.
    pub environment: Option<String>,
    /// `status` must equal it.
    pub status: Option<String>,
}

impl Filter {
    fn matches(&self, item: &RawValue) -> Result<bool, Failure> {
        #[derive(Deserialize)]
        struct Fields {
            project: String,
            environment: String,
            status: String,
        }
        let fields: Fields = serde_json::from_str(item.get()).map_err(|e| {
            Failure::Unexpected(format!(
                "the API sent a deployment this client cannot read: {e}"
            ))
        })?;
        let wanted =
            |filter: &Option<String>, value: &str| filter.as_deref().is_none_or(|f| f == value);
        Ok(wanted(&self.project, &fields.project)
            && wanted(&self.environment, &fields.environment)
            && wanted(&self.status, &fields.status))
    }
}

/// The first `want` deployments after `cursor` that match `filter`, as one page, and how
/// many deployments were looked at. `fetch(cursor, limit)` gets one page of the API.
///
/// Pages of [`MAX_PAGE_SIZE`] are scanned. When the last match needed is not the last item
/// of its page, that page is fetched again, cut right after it, so that its `next_cursor`
/// resumes exactly there: nothing is skipped or shown twice by the next call.
pub async fn filtered<F, Fut>(
    filter: &Filter,
    want: u32,
    cursor: Option<String>,
    mut fetch: F,
) -> Result<(Page, usize), Failure>
where
    F: FnMut(Option<String>, u32) -> Fut,
    Fut: Future<Output = Result<Page, Failure>>,
{
    let want = want as usize;
    if want == 0 {
        let page = Page {
            items: Vec::new(),
            next_cursor: cursor,
        };
        return Ok((page, 0));
    }
    let mut cursor = cursor;
    let mut items = Vec::new();
    let mut scanned = 0;
    loop {
        let page = fetch(cursor.clone(), MAX_PAGE_SIZE).await?;
        let mut matched = Vec::new();
        for (index, item) in page.items.iter().enumerate() {
            if filter.matches(item)? {
                matched.push(index);
            }
        }
        let needed = want - items.len();
        if matched.len() >= needed {
            let last = matched[needed - 1];
            let page = if last + 1 == page.items.len() {
                page
            } else {
                // +1 fits: `last` is an index into a page of at most MAX_PAGE_SIZE items.
                let cut = u32::try_from(last + 1).expect("a page index fits");
                fetch(cursor, cut).await?
            };
            scanned += page.items.len();
            for item in page.items {
                if items.len() < want && filter.matches(&item)? {
                    items.push(item);
                }
            }
            return Ok((
                Page {
                    items,
                    next_cursor: page.next_cursor,
                },
                scanned,
            ));
        }
        scanned += page.items.len();
        for index in matched {
            items.push(page.items[index].clone());
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => {
                return Ok((
                    Page {
                        items,
                        next_cursor: None,
                    },
                    scanned,
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, future::ready};

    use super::*;

    /// `n` deployments, newest first: `d<n-1>` ... `d0`; even ones in project `a`.
    fn table(n: usize) -> Vec<String> {
        (0..n)
            .rev()
            .map(|i| {
                let project = if i % 2 == 0 { "a" } else { "b" };
                format!(
                    r#"{{"id":"d{i}","project":"{project}","environment":"prod","status":"queued"}}"#
                )
            })
            .collect()
    }

    /// Pages over `rows` like the API: the cursor is the index to start at.
    fn api<'a>(
        rows: &'a [String],
        calls: &'a RefCell<Vec<(Option<String>, u32)>>,
    ) -> impl FnMut(Option<String>, u32) -> std::future::Ready<Result<Page, Failure>> + 'a {
        move |cursor, limit| {
            calls.borrow_mut().push((cursor.clone(), limit));
            let start: usize = cursor.map_or(0, |c| c.parse().unwrap());
            let end = (start + limit as usize).min(rows.len());
            let items = rows[start..end]
                .iter()
                .map(|r| RawValue::from_string(r.clone()).unwrap())
                .collect();
            let next_cursor = (end < rows.len()).then(|| end.to_string());
            ready(Ok(Page { items, next_cursor }))
        }
    }

    fn ids(page: &Page) -> Vec<String> {
        page.items
            .iter()
            .map(|i| serde_json::from_str::<serde_json::Value>(i.get()).unwrap()["id"].to_string())
            .map(|id| id.trim_matches('"').to_owned())
            .collect()
    }

    fn project(p: &str) -> Filter {
        Filter {
            project: Some(p.to_owned()),
            ..Filter::default()
        }
    }

    #[tokio::test]
    async fn stops_at_the_limit_with_a_cursor_right_after_the_last_match() {
        let rows = table(250);
        let calls = RefCell::new(Vec::new());
        let (page, scanned) = filtered(&project("a"), 3, None, api(&rows, &calls))
            .await
            .unwrap();
        assert_eq!(ids(&page), ["d248", "d246", "d244"]);
        // d244 is the 6th row (after d249 ... d245): the page is fetched again with 6 rows.
        assert_eq!(page.next_cursor.as_deref(), Some("6"));
        assert_eq!(scanned, 6);
        assert_eq!(
            *calls.borrow(),
            [(None, MAX_PAGE_SIZE), (None, 6)],
            "one page, then the same page cut"
        );

        // Resuming there continues without a gap or a repeat.
        let (next, _) = filtered(&project("a"), 2, page.next_cursor, api(&rows, &calls))
            .await
            .unwrap();
        assert_eq!(ids(&next), ["d242", "d240"]);
    }

    #[tokio::test]
    async fn walks_every_page_when_matches_are_rare() {
        let rows = table(250);
        let calls = RefCell::new(Vec::new());
        let filter = Filter {
            status: Some("running".to_owned()),
            ..Filter::default()
        };
        let (page, scanned) = filtered(&filter, 20, None, api(&rows, &calls))
            .await
            .unwrap();
        assert!(page.items.is_empty());
        assert_eq!(page.next_cursor, None);
        assert_eq!(scanned, 250);
        assert_eq!(calls.borrow().len(), 3);

        // Fewer matches than wanted across pages: all of them, then the end.
        let (page, _) = filtered(&project("b"), 200, None, api(&rows, &calls))
            .await
            .unwrap();
        assert_eq!(page.items.len(), 125);
        assert_eq!(page.next_cursor, None);
    }

    #[tokio::test]
    async fn a_match_at_the_end_of_a_page_needs_no_second_fetch() {
        let rows = table(100);
        let calls = RefCell::new(Vec::new());
        let filter = Filter {
            environment: Some("prod".to_owned()),
            ..Filter::default()
        };
        let (page, _) = filtered(&filter, 100, None, api(&rows, &calls))
            .await
            .unwrap();
        assert_eq!(page.items.len(), 100);
        assert_eq!(calls.borrow().len(), 1);
    }

    #[tokio::test]
    async fn an_unreadable_item_is_an_error() {
        let rows = vec![r#"{"id":"x"}"#.to_owned()];
        let calls = RefCell::new(Vec::new());
        let result = filtered(&project("a"), 1, None, api(&rows, &calls)).await;
        assert!(matches!(result, Err(Failure::Unexpected(_))));
    }
}
