//! `twinstack top`: the busiest frontends, refreshed: connections, packets and bytes per
//! second each way, from the datapath's per-CPU traffic counters (`lb_stats`) sampled every
//! interval. Plain (a table per interval, the screen cleared first on a terminal) or JSON
//! (an object per interval).
use std::{
    collections::BTreeMap,
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{ServiceRow, Table, Traffic, services, with_traffic};
use crate::{
    family::{Family, socket_display},
    maps::pins::PinLayout,
};

/// What the rows are sorted by (descending).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortBy {
    Connections,
    Packets,
    Bytes,
}

/// One frontend's rates over the last interval, and its totals.
#[derive(Clone, Debug, Serialize)]
pub struct Rate {
    pub frontend: String,
    pub family: Family,
    pub rev_nat_id: u32,
    pub connections_per_second: f64,
    pub packets_to_per_second: f64,
    pub packets_from_per_second: f64,
    pub bytes_to_per_second: f64,
    pub bytes_from_per_second: f64,
    /// Since the counters began.
    pub connections: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Frame {
    /// Seconds the interval lasted.
    pub interval: f64,
    pub frontends: Vec<Rate>,
}

type Sample = BTreeMap<(Family, u32), (String, Traffic)>;

fn sample(pins: &PinLayout) -> anyhow::Result<Sample> {
    let mut rows: Vec<ServiceRow> = services(pins)?;
    with_traffic(&mut rows, pins)?;
    Ok(rows
        .into_iter()
        .filter(|r| r.port != crate::plan::UNEXPOSED_PORT)
        .map(|r| {
            let name = format!("{}/{}", socket_display(r.address, r.port), r.protocol);
            (
                (r.family, r.rev_nat_id),
                (name, r.stats.unwrap_or_default()),
            )
        })
        .collect())
}

/// The rates between two samples `seconds` apart, sorted by `sort`, the busiest first.
fn rates(before: &Sample, after: &Sample, seconds: f64, sort: SortBy) -> Vec<Rate> {
    let per_second = |now: u64, then: u64| now.saturating_sub(then) as f64 / seconds;
    let mut rates: Vec<Rate> = after
        .iter()
        .map(|((family, id), (name, now))| {
            let then = before
                .get(&(*family, *id))
                .filter(|(n, _)| n == name)
                .map(|(_, t)| *t)
                .unwrap_or_default();
            Rate {
                frontend: name.clone(),
                family: *family,
                rev_nat_id: *id,
                connections_per_second: per_second(now.connections, then.connections),
                packets_to_per_second: per_second(now.packets_to, then.packets_to),
                packets_from_per_second: per_second(now.packets_from, then.packets_from),
                bytes_to_per_second: per_second(now.bytes_to, then.bytes_to),
                bytes_from_per_second: per_second(now.bytes_from, then.bytes_from),
                connections: now.connections,
            }
        })
        .collect();
    let key = |r: &Rate| match sort {
        SortBy::Connections => r.connections_per_second,
        SortBy::Packets => r.packets_to_per_second + r.packets_from_per_second,
        SortBy::Bytes => r.bytes_to_per_second + r.bytes_from_per_second,
    };
    rates.sort_by(|a, b| key(b).total_cmp(&key(a)).then(a.frontend.cmp(&b.frontend)));
    rates
}

fn table(frame: &Frame, limit: usize) -> String {
    let mut table = Table::new([
        "FRONTEND",
        "CONN/S",
        "PKT/S TO",
        "PKT/S FROM",
        "BYTE/S TO",
        "BYTE/S FROM",
        "CONNS",
    ]);
    for r in frame.frontends.iter().take(limit) {
        table.row([
            r.frontend.clone(),
            format!("{:.1}", r.connections_per_second),
            format!("{:.1}", r.packets_to_per_second),
            format!("{:.1}", r.packets_from_per_second),
            format!("{:.0}", r.bytes_to_per_second),
            format!("{:.0}", r.bytes_from_per_second),
            r.connections.to_string(),
        ]);
    }
    table.to_string()
}

/// How a `top` run goes.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub interval: Duration,
    pub sort: SortBy,
    pub json: bool,
    /// Stop after this many intervals (`None`: until interrupted).
    pub count: Option<usize>,
    /// Rows shown in the plain view.
    pub limit: usize,
}

/// Samples every `options.interval` and shows the rates on `out`.
pub fn top(pins: &PinLayout, options: Options, out: &mut impl Write) -> anyhow::Result<()> {
    let clear = !options.json && std::io::stdout().is_terminal();
    let mut before = sample(pins)?;
    let mut at = Instant::now();
    let mut shown = 0;
    while options.count.is_none_or(|c| shown < c) {
        std::thread::sleep(options.interval);
        let after = sample(pins)?;
        let seconds = at.elapsed().as_secs_f64();
        at = Instant::now();
        let frame = Frame {
            interval: seconds,
            frontends: rates(&before, &after, seconds, options.sort),
        };
        if options.json {
            writeln!(out, "{}", serde_json::to_string(&frame)?)?;
        } else {
            if clear {
                write!(out, "\x1b[H\x1b[2J")?;
            }
            writeln!(
                out,
                "twinstack top: {} frontends, every {:.1}s\n{}",
                frame.frontends.len(),
                seconds,
                table(&frame, options.limit)
            )?;
        }
        out.flush()?;
        before = after;
        shown += 1;
    }
    Ok(())
}
