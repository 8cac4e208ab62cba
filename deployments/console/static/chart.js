// A line chart of [unix s, value] points as inline SVG (no library, nothing parsed as markup).
const NS = "http://www.w3.org/2000/svg";
const W = 480;
const H = 120;
const PAD = 28;

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

/** `points` over the time range [t0, t1] (unix s). */
export function chart(title, points, t0, t1) {
  const figure = document.createElement("figure");
  const caption = document.createElement("figcaption");
  caption.textContent = title;
  const box = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "aria-label": title });
  box.append(svg("line", { x1: PAD, y1: H - PAD, x2: W - 4, y2: H - PAD, class: "axis" }),
    svg("line", { x1: PAD, y1: 4, x2: PAD, y2: H - PAD, class: "axis" }));
  if (points.length) {
    const span = Math.max(1, t1 - t0);
    const top = Math.max(...points.map((p) => p[1])) || 1;
    const xy = points.map(([t, v]) => [PAD + ((t - t0) / span) * (W - PAD - 8), H - PAD - (v / top) * (H - PAD - 8)]);
    box.append(svg("polyline", { points: xy.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" "), class: "line" }),
      ...xy.map(([x, y]) => svg("circle", { cx: x.toFixed(1), cy: y.toFixed(1), r: 2, class: "dot" })),
      svg("text", { x: 2, y: 12, class: "tick" }, formatted(top)),
      svg("text", { x: 2, y: H - PAD, class: "tick" }, "0"),
      svg("text", { x: W - 4, y: H - 8, class: "tick", "text-anchor": "end" }, `latest ${formatted(points[points.length - 1][1])}`));
  } else {
    box.append(svg("text", { x: W / 2, y: H / 2, class: "tick", "text-anchor": "middle" }, "no data yet"));
  }
  box.append(svg("text", { x: PAD, y: H - 8, class: "tick" }, `${Math.round((t1 - t0) / 60)} min ago`));
  figure.append(caption, box);
  return figure;
}

function formatted(value) {
  return value >= 100 ? value.toFixed(0) : value.toFixed(2);
}
