// The admin port's status page: reads /status/data every two seconds and
// shows it. Every value is set as text; nothing is fetched from elsewhere.

const REFRESH_MS = 2000;
const WIDTH = 300;   // the charts' viewBox
const HEIGHT = 100;

const byId = (id) => document.getElementById(id);

function show(id, value) {
  byId(id).textContent = String(value);
}

function tbody(id) {
  return byId(id).querySelector("tbody");
}

function badge(id, link) {
  const element = byId(id);
  element.textContent = link.state;
  element.dataset.state = link.state;
}

// Rows of [text, …] under a table's body; the first cell's text as data-key.
function fill(tbody, rows) {
  if (rows.length === 0) {
    const cell = document.createElement("td");
    cell.colSpan = 2;
    cell.className = "none";
    cell.textContent = "none";
    tbody.replaceChildren(document.createElement("tr"));
    tbody.firstChild.append(cell);
    return;
  }
  tbody.replaceChildren(...rows.map((cells) => {
    const row = document.createElement("tr");
    row.dataset.key = String(cells[0]);
    cells.forEach((value, n) => {
      const cell = document.createElement("td");
      if (n > 0) cell.className = "num";
      cell.textContent = String(value);
      row.append(cell);
    });
    return row;
  }));
}

function rate(value) {
  return value >= 100 ? value.toFixed(0) : value.toFixed(1);
}

// A line (and the area under it) across the chart, oldest point at the left.
function chart(id, values) {
  const svg = byId(id);
  const peak = Math.max(1, ...values);
  const dx = WIDTH / Math.max(1, values.length - 1);
  const start = WIDTH - (values.length - 1) * dx;
  const points = values.map((value, n) =>
    `${(start + n * dx).toFixed(1)},${(HEIGHT - (value / peak) * (HEIGHT - 5)).toFixed(1)}`);
  svg.querySelector(".line").setAttribute("points", points.join(" "));
  svg.querySelector(".area").setAttribute("points", points.length
    ? `${start.toFixed(1)},${HEIGHT} ${points.join(" ")} ${WIDTH},${HEIGHT}` : "");
  svg.dataset.points = String(values.length);
  svg.dataset.peak = String(Math.max(0, ...values));
}

function render(data) {
  show("pid", data.pid);
  const db = data.database;
  badge("listener-state", db.listener);
  badge("queries-state", db.queries);
  show("db-reason", db.listener.reason || db.queries.reason || "–");
  show("channels", db.channels);
  show("reconnects", db.reconnects);
  show("queue-usage", db.queue_usage === null ? "unknown"
    : `${(db.queue_usage * 100).toFixed(db.queue_usage < 0.01 ? 2 : 0)} %`);
  show("bad-notifications", db.bad_notifications);

  const clients = data.clients;
  show("clients-total", clients.total);
  show("clients-max", clients.max);
  fill(tbody("dialects"),
       Object.entries(clients.by_dialect).map(([name, count]) => [name, count]));
  const events = clients.by_event.map((row) => [row.channel, row.subscribers]);
  if (clients.firehose) events.unshift(["firehose", clients.firehose]);
  fill(tbody("events"), events);

  const rates = data.rates;
  // The history the daemon has: up to `span` seconds, less just after its start.
  const seconds = rates.frames.length * rates.step;
  show("span", seconds >= 120 ? `${Math.round(seconds / 60)} minutes`
    : seconds > 0 ? `${seconds} seconds` : "–");
  for (const name of ["frames", "votes"]) {
    const values = rates[name];
    chart(`${name}-chart`, values);
    show(`${name}-now`, values.length ? rate(values[values.length - 1]) : "–");
    show(`${name}-peak`, values.length ? rate(Math.max(...values)) : "–");
  }

  show("slow-closed", data.slow_closed);
  fill(tbody("refusals"), data.refusals.map((row) => [row.kind, row.count]));
  fill(tbody("addresses"), data.addresses.map((row) => [row.address, row.clients]));
}

async function refresh() {
  const updated = byId("updated");
  try {
    const response = await fetch("/status/data", {cache: "no-store"});
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    render(await response.json());
    updated.dataset.state = "ok";
    updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    updated.dataset.state = "error";
    updated.textContent = `not updated: ${error.message}`;
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

refresh();
