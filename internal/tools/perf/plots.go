package main

import (
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// writePlots draws the PNGs into dir and returns them by "<section>-<kind>" -> file name.
func writePlots(rs *Results, dir string) (map[string]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	images := map[string]string{}
	metrics := []struct {
		kind, label string
		v           func(Result) float64
	}{
		{"wall", "median wall time (s)", func(r Result) float64 { return r.WallS }},
		{"cpu", "client CPU (s, user+sys)", func(r Result) float64 { return r.ClientCPUS }},
		{"rss", "client peak RSS (MiB)", func(r Result) float64 { return r.PeakRSSMiB }},
	}
	for _, section := range []string{"save", "restore"} {
		rows := filterSection(rs, section)
		if len(rows) == 0 {
			continue
		}
		for _, m := range metrics {
			file := fmt.Sprintf("%s-%s.png", section, m.kind)
			if err := linePlot(rows, section+": "+m.label+" vs DB size", m.label, m.v, filepath.Join(dir, file)); err != nil {
				return nil, fmt.Errorf("plot %s: %w", file, err)
			}
			images[section+"-"+m.kind] = file
		}
	}
	if rows := filterSection(rs, "guard"); len(rows) > 0 {
		for _, m := range metrics {
			if m.kind == "cpu" {
				continue
			}
			file := "guard-" + m.kind + ".png"
			if err := guardPlot(rows, m.label, m.v, filepath.Join(dir, file)); err != nil {
				return nil, fmt.Errorf("plot %s: %w", file, err)
			}
			images["guard-"+m.kind] = file
		}
	}
	return images, nil
}

func filterSection(rs *Results, section string) []Result {
	var rows []Result
	for _, r := range rs.Results {
		if r.Section == section {
			rows = append(rows, r)
		}
	}
	return rows
}

// contenders in table order.
func contenders(rows []Result) []string {
	var names []string
	order := map[string]int{}
	for _, r := range rows {
		if _, ok := order[r.Contender]; !ok {
			order[r.Contender] = r.Order
			names = append(names, r.Contender)
		}
	}
	slices.SortStableFunc(names, func(a, b string) int { return order[a] - order[b] })
	return names
}

// linePlot: one line per contender, x the DB size in MiB.
func linePlot(rows []Result, title, ylabel string, v func(Result) float64, path string) error {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "DB size (MiB, etcd snapshot)"
	p.Y.Label.Text = ylabel
	p.Y.Min = 0
	p.Legend.Top = true
	p.Legend.Left = true
	p.Add(plotter.NewGrid())
	lo, hi := 0.0, 0.0
	for _, r := range rows {
		x := float64(r.DBBytes) / (1 << 20)
		if lo == 0 || x < lo {
			lo = x
		}
		hi = max(hi, x)
	}
	if lo > 0 && hi/lo >= 8 {
		// 100 MiB to 8 GiB: evenly spaced on a log scale.
		p.X.Scale = plot.LogScale{}
		p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	}
	for i, name := range contenders(rows) {
		var xys plotter.XYs
		for _, r := range rows {
			if r.Contender == name {
				xys = append(xys, plotter.XY{X: float64(r.DBBytes) / (1 << 20), Y: v(r)})
			}
		}
		slices.SortFunc(xys, func(a, b plotter.XY) int {
			switch {
			case a.X < b.X:
				return -1
			case a.X > b.X:
				return 1
			}
			return 0
		})
		l, pts, err := plotter.NewLinePoints(xys)
		if err != nil {
			return err
		}
		l.Color, pts.Color = plotutil.Color(i), plotutil.Color(i)
		l.Dashes = plotutil.Dashes(i)
		pts.Shape = plotutil.Shape(i)
		p.Add(l, pts)
		p.Legend.Add(name, l, pts)
	}
	p.Y.Max *= 1.45 // room for the legend above the lines
	return p.Save(8*vg.Inch, 5*vg.Inch, path)
}

// guardPlot: bars of v, grouped by etcd server version, one bar per contender.
func guardPlot(rows []Result, label string, v func(Result) float64, path string) error {
	var servers []string
	for _, r := range rows {
		if !slices.Contains(servers, r.Server) {
			servers = append(servers, r.Server)
		}
	}
	slices.Sort(servers)
	p := plot.New()
	p.Title.Text = fmt.Sprintf("guard: %s by etcd server (%s)", label, rows[0].Size)
	p.Y.Label.Text = label
	p.Legend.Top = true
	p.Legend.Left = true
	names := contenders(rows)
	w := vg.Points(30)
	for i, name := range names {
		vals := make(plotter.Values, len(servers))
		for j, s := range servers {
			for _, r := range rows {
				if r.Contender == name && r.Server == s {
					vals[j] = v(r)
				}
			}
		}
		bars, err := plotter.NewBarChart(vals, w)
		if err != nil {
			return err
		}
		bars.Color = plotutil.Color(i)
		bars.LineStyle.Color = color.Black
		bars.Offset = w * vg.Length(float64(i)-float64(len(names)-1)/2)
		p.Add(bars)
		p.Legend.Add(name, bars)
	}
	labels := make([]string, len(servers))
	for i, s := range servers {
		labels[i] = "etcd " + s
	}
	p.NominalX(labels...)
	p.Y.Min = 0
	p.Y.Max *= 1.3 // room for the legend above the bars
	return p.Save(8*vg.Inch, 5*vg.Inch, path)
}
