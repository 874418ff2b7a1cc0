// Who is signed in: the key and what it may do, found by asking the API.
import { ApiError, apiKey, get, type Tenant, type Usage } from "./api";

export interface Identity {
  key: string;
  tenant: Tenant | null;
  usage: Usage;
  admin: boolean;
  operator: boolean;
}

async function allowed(path: string, key: string): Promise<boolean> {
  try {
    await get(path, { key });
    return true;
  } catch (e) {
    if (e instanceof ApiError && (e.status === 403 || e.status === 404 || e.status === 501)) return false;
    throw e;
  }
}

/** probe checks a key (401 when it is wrong) and finds its scopes. */
export async function probe(key: string): Promise<Identity> {
  const usage = await get<Usage>("/v1/usage", { key });
  const [tenant, admin, operator] = await Promise.all([
    get<Tenant>("/v1/tenant", { key }).catch(() => null),
    allowed("/v1/keys", key),
    allowed("/v1/admin/tenants?limit=1", key),
  ]);
  return { key, tenant, usage, admin, operator };
}

export function signOut() {
  apiKey.clear();
}
