package caddymodule

// generations is a map bounded by rotation rather than by sweeps: entries
// go into the current generation; when it holds limit entries, it becomes
// the previous one and the previous one is dropped whole. Lookups see both
// and move what they find into the current one, so what is in use stays
// and what is not is forgotten after at most two rotations. Every
// operation is O(1) amortised, whatever the flood; memory is at most
// 2*limit entries. Not safe for concurrent use: callers lock.
type generations[K comparable, V any] struct {
	limit     int
	cur, prev map[K]V
}

func newGenerations[K comparable, V any](limit int) *generations[K, V] {
	return &generations[K, V]{limit: limit, cur: make(map[K]V), prev: make(map[K]V)}
}

func (g *generations[K, V]) get(k K) (V, bool) {
	if v, ok := g.cur[k]; ok {
		return v, true
	}
	if v, ok := g.prev[k]; ok {
		delete(g.prev, k)
		g.put(k, v)
		return v, true
	}
	var zero V
	return zero, false
}

func (g *generations[K, V]) put(k K, v V) {
	if _, ok := g.cur[k]; !ok && len(g.cur) >= g.limit {
		g.prev, g.cur = g.cur, make(map[K]V, g.limit/4)
	}
	g.cur[k] = v
}

func (g *generations[K, V]) len() int { return len(g.cur) + len(g.prev) }

// sweep drops the entries keep refuses. It is O(n): for periodic cleanup,
// never per request.
func (g *generations[K, V]) sweep(keep func(K, V) bool) {
	for _, m := range []map[K]V{g.cur, g.prev} {
		for k, v := range m {
			if !keep(k, v) {
				delete(m, k)
			}
		}
	}
}
