-- Runs once, when the compose PostgreSQL initialises its data directory,
-- after the e-commerce schema (10-ecommerce.sql). It prepares what the
-- README's "Preparing PostgreSQL" asks for, as the superuser:
--   * the role pgfanout logs in as: LOGIN + REPLICATION, SELECT on the
--     tables (initial snapshot), CREATE on the database (pgfanout keeps its
--     snapshot state in schema `pgfanout`);
--   * the publication, created here by the tables' owner (CREATE
--     PUBLICATION ... FOR TABLE needs ownership); pgfanout uses an existing
--     publication as it is.
-- The password is for this local setup only.
CREATE ROLE replicator LOGIN REPLICATION PASSWORD 'replicator';
GRANT SELECT ON ALL TABLES IN SCHEMA public TO replicator;
GRANT CREATE ON DATABASE shop TO replicator;
CREATE PUBLICATION pgfanout FOR TABLE users, products, orders, order_items, cart_items;
