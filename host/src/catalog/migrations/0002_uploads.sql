-- Object storage: each object's ETag and upload state ('stored': complete where its key says;
-- 'spooled': waiting in the local spool for the object storage; 'failed': refused for good).
ALTER TABLE recordings ADD COLUMN etag TEXT;
ALTER TABLE recordings ADD COLUMN upload_state TEXT NOT NULL DEFAULT 'stored';
CREATE INDEX recordings_by_upload ON recordings (upload_state, storage);
