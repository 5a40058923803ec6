// Package stats renders Prometheus metrics in the original API's stats
// document (/v1/stats/app, /v1/stats/db): each metric an object with its
// data points, help and type, grouped per node keyed hostname:container.
//
//	{"stats":{"app":{"host:container":{"name":{"data":[{"labels":{...},"value":1}],"help":"...","type":"gauge"}}}}}
//
// With ?format=prometheus the same samples go out in the text exposition
// format, each carrying a node label, so one scrape covers the cluster.
package stats

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/protobuf/proto"
)

// Point is one sample.
type Point struct {
	Labels map[string]string `json:"labels,omitempty"`
	Value  float64           `json:"value"`
}

// Metric is one metric in the original's shape.
type Metric struct {
	Data []Point `json:"data"`
	Help string  `json:"help"`
	Type string  `json:"type"`
}

// Parse reads the text exposition format (a node's /metrics).
func Parse(text []byte) ([]*dto.MetricFamily, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(text))
	if err != nil {
		return nil, fmt.Errorf("parse metrics: %w", err)
	}
	out := make([]*dto.MetricFamily, 0, len(fams))
	for _, f := range fams {
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetName() < out[j].GetName() })
	return out, nil
}

// Only keeps the families whose name starts with prefix.
func Only(fams []*dto.MetricFamily, prefix string) []*dto.MetricFamily {
	var out []*dto.MetricFamily
	for _, f := range fams {
		if strings.HasPrefix(f.GetName(), prefix) {
			out = append(out, f)
		}
	}
	return out
}

// Document converts families to the original's JSON objects. Histograms
// and summaries become NAME_count and NAME_sum, as the original reported
// its durations (callback_requests_duration_ms_count).
func Document(fams []*dto.MetricFamily) map[string]Metric {
	out := map[string]Metric{}
	for _, f := range fams {
		name, help := f.GetName(), f.GetHelp()
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM, dto.MetricType_SUMMARY:
			count, sum := Metric{Help: help + " (count)", Type: "counter"}, Metric{Help: help + " (sum)", Type: "counter"}
			for _, m := range f.GetMetric() {
				labels := labelMap(m)
				if h := m.GetHistogram(); h != nil {
					count.Data = append(count.Data, Point{labels, float64(h.GetSampleCount())})
					sum.Data = append(sum.Data, Point{labels, h.GetSampleSum()})
				} else if s := m.GetSummary(); s != nil {
					count.Data = append(count.Data, Point{labels, float64(s.GetSampleCount())})
					sum.Data = append(sum.Data, Point{labels, s.GetSampleSum()})
				}
			}
			out[name+"_count"], out[name+"_sum"] = count, sum
		default:
			metric := Metric{Help: help, Type: strings.ToLower(f.GetType().String())}
			for _, m := range f.GetMetric() {
				v := m.GetGauge().GetValue()
				switch {
				case m.Counter != nil:
					v = m.GetCounter().GetValue()
				case m.Untyped != nil:
					v = m.GetUntyped().GetValue()
				}
				if math.IsNaN(v) || math.IsInf(v, 0) {
					continue // JSON has no NaN
				}
				metric.Data = append(metric.Data, Point{labelMap(m), v})
			}
			out[name] = metric
		}
	}
	return out
}

func labelMap(m *dto.Metric) map[string]string {
	if len(m.GetLabel()) == 0 {
		return nil
	}
	l := map[string]string{}
	for _, p := range m.GetLabel() {
		l[p.GetName()] = p.GetValue()
	}
	return l
}

// WriteText writes families in the text format with label node=key added
// to every sample. Families of the same name from several nodes must be
// written together, so callers pass every node's families at once.
func WriteText(w io.Writer, byNode map[string][]*dto.MetricFamily) error {
	merged := map[string]*dto.MetricFamily{}
	keys := make([]string, 0, len(byNode))
	for k := range byNode {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, key := range keys {
		for _, f := range byNode[key] {
			m := merged[f.GetName()]
			if m == nil {
				m = &dto.MetricFamily{Name: f.Name, Help: f.Help, Type: f.Type}
				merged[f.GetName()] = m
			}
			for _, metric := range f.GetMetric() {
				c := proto.Clone(metric).(*dto.Metric)
				c.Label = append(c.Label, &dto.LabelPair{Name: proto.String("node"), Value: proto.String(key)})
				m.Metric = append(m.Metric, c)
			}
		}
	}
	names := make([]string, 0, len(merged))
	for n := range merged {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if len(merged[n].Metric) == 0 {
			continue // the text format has no empty family
		}
		if _, err := expfmt.MetricFamilyToText(w, merged[n]); err != nil {
			return err
		}
	}
	return nil
}
