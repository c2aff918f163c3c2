import type { Member } from "../api";
import { useStore } from "../store";
import { CrownIcon } from "./Icons";
import { displayName, nameColour } from "./MessagePane";

/** Members grouped under their highest hoisted role, then everyone else. */
export function MemberList({ guildId }: { guildId: string }) {
  const store = useStore();
  const data = store.guildData(guildId);
  const hoisted = data.roles.filter((r) => r.hoist && r.id !== "everyone").sort((a, b) => b.position - a.position);
  const groups = new Map<string, Member[]>();
  for (const m of data.members) {
    const top = hoisted.find((r) => m.roles.includes(r.id));
    const key = top?.id ?? "";
    groups.set(key, [...(groups.get(key) ?? []), m]);
  }
  const sections = [
    ...hoisted.map((r) => ({ id: r.id, title: r.name })),
    { id: "", title: "Members" },
  ].filter((s) => groups.get(s.id)?.length);
  const name = (m: Member) => displayName(store, data.members, m.user_id);
  return (
    <aside className="members" aria-label="Members">
      {sections.map((s) => {
        const list = [...(groups.get(s.id) ?? [])].sort((a, b) => name(a).localeCompare(name(b)));
        return (
          <section key={s.id}>
            <h2>
              {s.title} — {list.length}
            </h2>
            <ul role="list">
              {list.map((m) => (
                <li key={m.user_id} className="member" title={m.user_id}>
                  <div className="avatar small" aria-hidden="true">{name(m)[0]?.toUpperCase()}</div>
                  <span className="truncate" style={{ color: nameColour(data.roles, data.members, m.user_id) }}>
                    {name(m)}
                  </span>
                  {m.user_id === data.guild?.owner && (
                    <span title="Guild owner" aria-label="Guild owner" role="img">
                      <CrownIcon />
                    </span>
                  )}
                </li>
              ))}
            </ul>
          </section>
        );
      })}
    </aside>
  );
}
