// Horizontal bars of each option's composite score in [0, 1], drawn with D3. The same
// numbers are in a table for screen readers.
import { useEffect, useRef } from "react";
import { axisBottom } from "d3-axis";
import { scaleBand, scaleLinear } from "d3-scale";
import { select } from "d3-selection";
import { useWidth } from "./useWidth";

export interface Bar {
  label: string;
  value: number;
  highlight?: boolean;
}

export function BarChart({ bars, title }: { bars: Bar[]; title: string }) {
  const [box, width] = useWidth<HTMLDivElement>();
  const svgRef = useRef<SVGSVGElement>(null);
  const labelWidth = Math.min(160, Math.floor(width * 0.35));
  const height = 28 + bars.length * 36;

  useEffect(() => {
    const svg = select(svgRef.current);
    svg.selectAll("*").remove();
    const margin = { top: 4, right: 48, bottom: 24, left: labelWidth };
    const x = scaleLinear().domain([0, 1]).range([margin.left, width - margin.right]);
    const y = scaleBand<number>()
      .domain(bars.map((_, i) => i))
      .range([margin.top, height - margin.bottom])
      .padding(0.25);
    svg
      .append("g")
      .attr("transform", `translate(0,${height - margin.bottom})`)
      .call(axisBottom(x).ticks(Math.max(2, Math.floor(width / 90)), "%"))
      .attr("font-size", 12);
    const row = svg.selectAll("g.bar").data(bars).join("g").attr("class", "bar");
    row
      .append("rect")
      .attr("x", x(0))
      .attr("y", (_, i) => y(i)!)
      .attr("height", y.bandwidth())
      .attr("width", (d) => Math.max(0, x(Math.min(1, Math.max(0, d.value))) - x(0)))
      .attr("fill", (d) => (d.highlight ? "#1b5e20" : "#558b2f"));
    row
      .append("text")
      .attr("x", margin.left - 8)
      .attr("y", (_, i) => y(i)! + y.bandwidth() / 2)
      .attr("dy", "0.35em")
      .attr("text-anchor", "end")
      .attr("font-size", 14)
      .attr("fill", "#1c1c1c")
      .text((d) => (d.label.length > 22 ? d.label.slice(0, 21) + "…" : d.label));
    row
      .append("text")
      .attr("x", (d) => x(Math.min(1, Math.max(0, d.value))) + 6)
      .attr("y", (_, i) => y(i)! + y.bandwidth() / 2)
      .attr("dy", "0.35em")
      .attr("font-size", 13)
      .attr("fill", "#1c1c1c")
      .text((d) => `${(d.value * 100).toFixed(1)}%`);
  }, [bars, width, height, labelWidth]);

  return (
    <div ref={box} style={{ width: "100%" }}>
      <svg ref={svgRef} width={width} height={height} role="img" aria-label={title} data-testid="bar-chart" />
      <table className="visually-hidden">
        <caption>{title}</caption>
        <thead>
          <tr>
            <th scope="col">Option</th>
            <th scope="col">Composite score</th>
          </tr>
        </thead>
        <tbody>
          {bars.map((b) => (
            <tr key={b.label}>
              <td>{b.label}</td>
              <td>{(b.value * 100).toFixed(1)}%</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
