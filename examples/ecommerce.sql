-- The e-commerce example schema used by the README, the demo and config/ecommerce.yaml.
CREATE TABLE users (
  id bigint PRIMARY KEY,
  email text NOT NULL UNIQUE,
  name text NOT NULL,
  prefs jsonb NOT NULL DEFAULT '{}',
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE products (
  id bigint PRIMARY KEY,
  sku text NOT NULL UNIQUE,
  title text NOT NULL,
  description text,
  category_id int NOT NULL,
  price numeric(12,2) NOT NULL,
  cost_price numeric(12,2),
  tags text[] NOT NULL DEFAULT '{}'
);
CREATE TABLE orders (
  id bigint PRIMARY KEY,
  user_id bigint NOT NULL REFERENCES users(id),
  status text NOT NULL DEFAULT 'new',
  total numeric(12,2) NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE order_items (
  order_id bigint NOT NULL REFERENCES orders(id),
  product_id bigint NOT NULL REFERENCES products(id),
  user_id bigint NOT NULL REFERENCES users(id),
  quantity int NOT NULL,
  price numeric(12,2) NOT NULL,
  PRIMARY KEY (order_id, product_id)
);
CREATE TABLE cart_items (
  user_id bigint NOT NULL REFERENCES users(id),
  product_id bigint NOT NULL REFERENCES products(id),
  quantity int NOT NULL,
  added_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (user_id, product_id)
);
-- Users' addresses: embedded in their profile documents (config/profiles.yaml).
CREATE TABLE addresses (
  id bigint PRIMARY KEY,
  user_id bigint NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  kind text NOT NULL,
  street text NOT NULL,
  city text NOT NULL,
  postcode text
);
-- The transactional outbox: the application inserts an event row in the
-- transaction of the change it describes; pgfanout publishes it
-- (pipeline order-events in config/ecommerce.yaml).
CREATE TABLE outbox (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  aggregatetype text NOT NULL,
  aggregateid text NOT NULL,
  type text NOT NULL,
  payload jsonb NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
