-- Rubrics (``rubric_store.py``): a tenant's named, versioned sets of weighted criteria. Creating a rubric
-- under a name it already has adds the next version; a run names one by id, or by name (its latest version).
CREATE TABLE rubrics (
    id         text PRIMARY KEY,                 -- rub_<hex>
    tenant_id  text NOT NULL,
    name       text NOT NULL,
    version    integer NOT NULL,                 -- 1, 2, ... per tenant and name
    rubric     jsonb NOT NULL,                   -- Rubric.to_dict(): every setting resolved, judge prompts recorded
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name, version)
);
CREATE INDEX rubrics_tenant_created ON rubrics (tenant_id, created_at DESC, id);
