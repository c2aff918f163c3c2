// How the message list arranges messages: a divider where the day changes, and consecutive
// messages of one author within a few minutes under one header.

export interface Msg {
  id: string;
  sender: string;
  ts: number;
  /** A reply starts a group of its own (its quote sits above the author's name). */
  reply?: boolean;
}

export type Item<M extends Msg> =
  | { kind: "day"; key: string; ts: number }
  | { kind: "group"; key: string; sender: string; messages: M[] };

export const GROUP_GAP_MS = 7 * 60 * 1000;

function dayOf(ts: number): string {
  const d = new Date(ts);
  return `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}`;
}

export function groupMessages<M extends Msg>(messages: M[]): Item<M>[] {
  const items: Item<M>[] = [];
  let group: { kind: "group"; key: string; sender: string; messages: M[] } | null = null;
  let day = "";
  for (const m of messages) {
    const d = dayOf(m.ts);
    if (d !== day) {
      day = d;
      items.push({ kind: "day", key: `day-${d}`, ts: m.ts });
      group = null;
    }
    const last = group?.messages[group.messages.length - 1];
    if (group && last && group.sender === m.sender && !m.reply && m.ts - last.ts <= GROUP_GAP_MS) {
      group.messages.push(m);
    } else {
      group = { kind: "group", key: m.id, sender: m.sender, messages: [m] };
      items.push(group);
    }
  }
  return items;
}
