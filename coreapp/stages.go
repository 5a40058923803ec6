package main

import (
	"github.com/multiconnect/multiconnect/coreapp/internal/accept"
	"github.com/multiconnect/multiconnect/coreapp/internal/api"
	"github.com/multiconnect/multiconnect/coreapp/internal/claim"
	"github.com/multiconnect/multiconnect/coreapp/internal/contacts"
	"github.com/multiconnect/multiconnect/coreapp/internal/events"
	"github.com/multiconnect/multiconnect/coreapp/internal/media"
	"github.com/multiconnect/multiconnect/coreapp/internal/outbox"
	"github.com/multiconnect/multiconnect/coreapp/internal/slots"
	"github.com/multiconnect/multiconnect/coreapp/internal/webhooks"
)

// stages are the coreapp's pipeline, wired to each other through the small
// interfaces their Deps name (README, "Inside the coreapp").
type stages struct {
	c        *Coreapp
	slots    slots.Slots // users' requests doing database work at once
	acceptor *accept.Acceptor
	outbox   *outbox.Outbox
	events   *events.Writer
	webhooks *webhooks.Dispatcher
	media    *media.Store
	contacts *contacts.Checker
}

// stages makes the claim holder (c.holder) and every stage; c.plugins must
// be set. Nothing runs until run starts them.
func (c *Coreapp) stages(mediaDir string) (*stages, error) {
	m := c.metrics
	st := &stages{c: c, slots: slots.New(slots.RequestSlots)}
	c.holder = claim.New(claim.Deps{ID: c.id, DB: c.claimDB, Log: c.log, Settings: c.settings, Plugins: c.plugins, DBError: c.dbError,
		Metrics: claim.Metrics{Registry: m.reg, Primary: m.primary, Shard: m.shard, Connects: m.connects, StepDowns: m.stepDowns},
		// A new primary sends the backlog its predecessor left at once,
		// and a dispatcher whose claim ended stops at once.
		Wake: func() { st.outbox.Nudge(); st.webhooks.Nudge() }})
	var err error
	if st.media, err = media.New(media.Deps{DB: c.db, Log: c.log, Plugins: c.plugins, DBError: c.dbError}, mediaDir); err != nil {
		return nil, err
	}
	st.webhooks = webhooks.New(webhooks.Deps{DB: c.db, Log: c.log, Settings: c.settings, Claim: c.holder, DBError: c.dbError,
		Metrics: webhooks.Metrics{CallbacksDelivered: m.callbacksDelivered, WebhookFailures: m.webhookFailures}})
	st.events = events.New(events.Deps{DB: c.db, Log: c.log, Settings: c.settings, Plugins: c.plugins, Claim: c.holder,
		Media: st.media, Dispatcher: st.webhooks, CallbacksStored: m.callbacksStored,
		Redeliveries: m.eventRedeliveries, DBError: c.dbError})
	st.outbox = outbox.New(outbox.Deps{DB: c.db, Log: c.log, Settings: c.settings, Plugins: c.plugins, Claim: c.holder,
		Failures: st.events, Delivered: m.delivered})
	st.acceptor = accept.New(accept.Deps{ID: c.id, DB: c.db, Log: c.log, Settings: c.settings, Claim: c.holder,
		Outbox: st.outbox, Media: st.media, Slots: st.slots, DBError: c.dbError,
		Metrics: accept.Metrics{Accepted: m.accepted, AcceptBatch: m.acceptBatch, AcceptCommit: m.acceptCommit}})
	st.contacts = contacts.New(contacts.Deps{DB: c.db, Log: c.log, Plugins: c.plugins, DBError: c.dbError})
	return st, nil
}

// api is the internal port's server; secret is the cluster secret, known
// only once the database has it.
func (st *stages) api(secret string) *api.Server {
	c := st.c
	return api.New(api.Deps{ID: c.id, Secret: secret, DB: c.db, Log: c.log, Settings: c.settings, Plugins: c.plugins,
		Claim: c.holder, Accept: st.acceptor, Contacts: st.contacts, Media: st.media, Slots: st.slots,
		Registry: c.metrics.reg, MeasureDepth: c.measureDepth, Heartbeats: c.metrics.heartbeats, DBError: c.dbError})
}
