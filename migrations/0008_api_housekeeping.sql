-- The API deletes published outbox events after an hour; this index keeps
-- that from scanning the whole table.
CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;
