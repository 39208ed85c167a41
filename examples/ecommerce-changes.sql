-- A few changes for the demo: each statement is its own transaction.
INSERT INTO users VALUES (1, 'ada@example.com', 'Ada', '{"theme": "dark"}'), (2, 'linus@example.com', 'Linus', '{}');
INSERT INTO addresses VALUES (1, 1, 'home', '12 Analytical Row', 'London', 'N1 9GU'), (2, 1, 'work', '1 Engine Yard', 'London', 'EC1A 1AA');
INSERT INTO products VALUES (10, 'SKU-10', 'Keyboard', 'Mechanical', 3, 89.90, 41.00, '{input,usb}'),
                            (11, 'SKU-11', 'Mouse', NULL, 3, 19.99, 7.50, '{input}');
INSERT INTO cart_items VALUES (1, 10, 1), (1, 11, 2);
UPDATE cart_items SET quantity = 3 WHERE user_id = 1 AND product_id = 11;
BEGIN;
INSERT INTO orders VALUES (100, 1, 'paid', 149.87);
INSERT INTO order_items VALUES (100, 10, 1, 1, 89.90), (100, 11, 1, 3, 19.99);
DELETE FROM cart_items WHERE user_id = 1;
INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', '100', 'order_placed',
  '{"order_id": 100, "user_id": 1, "total": 149.87, "items": [{"product_id": 10, "quantity": 1}, {"product_id": 11, "quantity": 3}]}');
COMMIT;
UPDATE products SET price = 84.90 WHERE id = 10;
UPDATE addresses SET city = 'Cambridge', postcode = 'CB2 1TN' WHERE id = 2;
