// A metric over time with D3: the mean of each window as a line, its min–max range as a
// band, flagged windows as red rings. A table repeats the points for screen readers.
import { useEffect, useRef } from "react";
import { extent } from "d3-array";
import { axisBottom, axisLeft } from "d3-axis";
import { scaleLinear, scaleTime } from "d3-scale";
import { select } from "d3-selection";
import { area, line } from "d3-shape";
import type { Window } from "../api/types";
import { useWidth } from "./useWidth";

export function LineChart({
  points,
  title,
  unit,
  flagged = [],
  threshold,
}: {
  points: Window[];
  title: string;
  unit?: string;
  flagged?: number[];
  threshold?: number;
}) {
  const [box, width] = useWidth<HTMLDivElement>();
  const svgRef = useRef<SVGSVGElement>(null);
  const height = Math.round(Math.min(320, Math.max(200, width * 0.45)));

  useEffect(() => {
    const svg = select(svgRef.current);
    svg.selectAll("*").remove();
    if (points.length === 0) return;
    const margin = { top: 12, right: 16, bottom: 28, left: 48 };
    const times = extent(points, (p) => p.start) as [number, number];
    const x = scaleTime()
      .domain(times[0] === times[1] ? [times[0] - 60_000, times[1] + 60_000] : times)
      .range([margin.left, width - margin.right]);
    const lo = Math.min(...points.map((p) => p.min));
    const hi = Math.max(...points.map((p) => p.max), threshold ?? -Infinity);
    const y = scaleLinear()
      .domain([Math.min(0, lo), hi === lo ? hi + 1 : hi])
      .nice()
      .range([height - margin.bottom, margin.top]);
    svg
      .append("g")
      .attr("transform", `translate(0,${height - margin.bottom})`)
      .call(axisBottom(x).ticks(Math.max(2, Math.floor(width / 110))))
      .attr("font-size", 11);
    svg.append("g").attr("transform", `translate(${margin.left},0)`).call(axisLeft(y).ticks(5)).attr("font-size", 11);
    svg
      .append("path")
      .datum(points)
      .attr("fill", "#c5e1a5")
      .attr(
        "d",
        area<Window>()
          .x((p) => x(p.start))
          .y0((p) => y(p.min))
          .y1((p) => y(p.max)),
      );
    if (threshold !== undefined) {
      svg
        .append("line")
        .attr("x1", margin.left)
        .attr("x2", width - margin.right)
        .attr("y1", y(threshold))
        .attr("y2", y(threshold))
        .attr("stroke", "#b71c1c")
        .attr("stroke-dasharray", "4 3");
    }
    svg
      .append("path")
      .datum(points)
      .attr("fill", "none")
      .attr("stroke", "#1b5e20")
      .attr("stroke-width", 2)
      .attr("class", "mean-line")
      .attr(
        "d",
        line<Window>()
          .x((p) => x(p.start))
          .y((p) => y(p.mean)),
      );
    svg
      .selectAll("circle.point")
      .data(points)
      .join("circle")
      .attr("class", "point")
      .attr("cx", (p) => x(p.start))
      .attr("cy", (p) => y(p.mean))
      .attr("r", (p) => (flagged.includes(p.start) ? 6 : 2.5))
      .attr("fill", (p) => (flagged.includes(p.start) ? "none" : "#1b5e20"))
      .attr("stroke", (p) => (flagged.includes(p.start) ? "#b71c1c" : "none"))
      .attr("stroke-width", 2);
  }, [points, width, height, flagged, threshold]);

  return (
    <div ref={box} style={{ width: "100%" }}>
      <svg ref={svgRef} width={width} height={height} role="img" aria-label={title} data-testid="line-chart" />
      <table className="visually-hidden">
        <caption>{title}</caption>
        <thead>
          <tr>
            <th scope="col">Window start</th>
            <th scope="col">Mean{unit ? ` (${unit})` : ""}</th>
            <th scope="col">Min</th>
            <th scope="col">Max</th>
            <th scope="col">Readings</th>
          </tr>
        </thead>
        <tbody>
          {points.slice(-60).map((p) => (
            <tr key={p.start}>
              <td>{new Date(p.start).toLocaleString()}</td>
              <td>{p.mean.toFixed(2)}</td>
              <td>{p.min.toFixed(2)}</td>
              <td>{p.max.toFixed(2)}</td>
              <td>{p.count}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
