package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"google.golang.org/protobuf/proto"

	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/stats"
)

// dbGauge is one of the original's /v1/stats/db gauges: a query whose rows
// are (label value, count), or a bare count when label is empty.
type dbGauge struct {
	name, help, label, query string
}

// The original's database stats, over our tables. Contacts are
// whatsapp_user (valid) or non_whatsapp_user (invalid) as it labelled them;
// message receipts are the status callbacks kept for the webhook.
var dbGauges = []dbGauge{
	{"db_contacts", "Current number of contacts in DB", "type",
		`SELECT CASE status WHEN 'valid' THEN 'whatsapp_user' WHEN 'invalid' THEN 'non_whatsapp_user' ELSE status END, COUNT(*) FROM contacts GROUP BY 1`},
	{"db_message_receipts", "Current number of message receipts in DB", "",
		`SELECT COUNT(*) FROM callbacks WHERE kind = 'status'`},
	{"db_messages", "Current number of messages in DB", "type",
		`SELECT type, COUNT(*) FROM messages GROUP BY type`},
	{"db_pending_callbacks", "Current number of pending callbacks in DB", "",
		`SELECT COUNT(*) FROM callbacks WHERE delivered = 0`},
	{"db_pending_messages", "Current number of pending messages in DB", "",
		`SELECT COUNT(*) FROM messages WHERE state = 0`},
}

// statsDB is GET /v1/stats/db: the original's database gauges, reported by
// the primary master under its own key (as the original did), in JSON or,
// with ?format=prometheus, the text format. Like the original's, it counts
// whole tables: poll it when needed, not every second.
func (m *Master) statsDB(w http.ResponseWriter, r *http.Request) {
	fams, err := m.dbFamilies(r.Context())
	if err != nil {
		apierror.Write(w, apierror.GenericError, err.Error())
		return
	}
	if r.URL.Query().Get("format") == "prometheus" {
		var buf bytes.Buffer
		for _, f := range fams {
			if len(f.Metric) == 0 {
				continue // the text format has no empty family
			}
			if _, err := expfmt.MetricFamilyToText(&buf, f); err != nil {
				apierror.Write(w, apierror.GenericError, "render "+f.GetName()+": "+err.Error())
				return
			}
		}
		w.Header().Set("Content-Type", string(expfmt.NewFormat(expfmt.TypeTextPlain)))
		w.Write(buf.Bytes())
		return
	}
	key := m.id.Hostname + ":" + m.id.Container
	writeJSON(w, http.StatusOK, map[string]any{
		"stats": map[string]any{"db": map[string]any{key: stats.Document(fams)}},
		"meta":  meta(),
	})
}

func (m *Master) dbFamilies(ctx context.Context) ([]*dto.MetricFamily, error) {
	var out []*dto.MetricFamily
	for _, g := range dbGauges {
		f := &dto.MetricFamily{Name: proto.String(g.name), Help: proto.String(g.help), Type: dto.MetricType_GAUGE.Enum()}
		rows, err := m.db.QueryContext(ctx, g.query)
		if err != nil {
			return nil, fmt.Errorf("db stats %s: %w", g.name, err)
		}
		for rows.Next() {
			var label string
			var n float64
			dest := []any{&n}
			if g.label != "" {
				dest = []any{&label, &n}
			}
			if err := rows.Scan(dest...); err != nil {
				rows.Close()
				return nil, fmt.Errorf("db stats %s: %w", g.name, err)
			}
			metric := &dto.Metric{Gauge: &dto.Gauge{Value: proto.Float64(n)}}
			if g.label != "" {
				metric.Label = []*dto.LabelPair{{Name: proto.String(g.label), Value: proto.String(label)}}
			}
			f.Metric = append(f.Metric, metric)
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, fmt.Errorf("db stats %s: %w", g.name, err)
		}
		out = append(out, f)
	}
	return out, nil
}
