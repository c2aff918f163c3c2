// The emoji picker's built-in set: common emoji by category, each with the names search
// matches. Loaded on demand (the picker imports it when first opened), not in the initial JS.

export interface Emoji {
  e: string;
  n: string;
}

const RAW: [string, string][] = [
  [
    "Smileys",
    "😀 grinning smile|😃 smiley happy|😄 smile happy|😁 grin|😆 laughing|😅 sweat smile|🤣 rofl rolling laughing|😂 joy tears laughing|🙂 slightly smiling|🙃 upside down|😉 wink|😊 blush|😇 innocent halo|🥰 smiling hearts love|😍 heart eyes love|🤩 star struck|😘 kiss|😋 yum|😛 tongue|😜 winking tongue|🤪 zany crazy|🤔 thinking|🤨 raised eyebrow|😐 neutral|😑 expressionless|😶 no mouth|🙄 eye roll|😏 smirk|😬 grimace|😌 relieved|😔 pensive|😴 sleeping|🤒 sick thermometer|🤯 mind blown exploding|🥳 party partying|😎 cool sunglasses|🤓 nerd|😕 confused|😟 worried|😮 open mouth wow|😲 astonished|😳 flushed|🥺 pleading|😢 cry sad|😭 sob crying|😱 scream|😤 triumph huff|😡 rage angry|🤬 cursing|💀 skull dead|💩 poop|🤡 clown|👻 ghost|👽 alien|🤖 robot",
  ],
  [
    "People",
    "👍 thumbsup +1 yes like|👎 thumbsdown -1 no|👌 ok|✌️ victory peace|🤞 crossed fingers|🤘 rock horns|👋 wave hello|👏 clap|🙌 raised hands hooray|🙏 pray thanks please|💪 muscle strong|👀 eyes looking|🫡 salute|🤝 handshake|✋ raised hand|👉 point right|👈 point left|👆 point up|👇 point down|🖕 middle finger|🤷 shrug|🤦 facepalm|🙋 raising hand|🧠 brain",
  ],
  [
    "Nature",
    "🐶 dog|🐱 cat|🦀 crab rust ferris|🐍 snake python|🐸 frog|🦊 fox|🐻 bear|🐼 panda|🐧 penguin|🦄 unicorn|🐝 bee|🦋 butterfly|🌸 blossom flower|🌹 rose|🌻 sunflower|🌲 tree|🍀 clover luck|🔥 fire lit|⭐ star|🌟 glowing star|✨ sparkles|⚡ zap lightning|🌈 rainbow|☀️ sun|🌙 moon|❄️ snowflake|🌊 wave ocean",
  ],
  [
    "Food",
    "🍎 apple|🍌 banana|🍕 pizza|🍔 burger hamburger|🍟 fries|🌮 taco|🍣 sushi|🍜 ramen noodles|🍩 doughnut donut|🍪 cookie|🎂 cake birthday|🍫 chocolate|🍿 popcorn|☕ coffee|🍵 tea|🍺 beer|🍷 wine|🥂 cheers champagne|🧃 juice",
  ],
  [
    "Activities",
    "⚽ soccer football|🏀 basketball|🎮 video game controller|🎲 dice game|🎯 target bullseye|🏆 trophy win|🥇 gold medal first|🎉 tada party celebration|🎊 confetti|🎁 gift present|🎵 music note|🎸 guitar|🎨 art palette|🚀 rocket launch|✈️ airplane|🚗 car",
  ],
  [
    "Symbols",
    "❤️ heart love red|🧡 orange heart|💛 yellow heart|💚 green heart|💙 blue heart|💜 purple heart|🖤 black heart|💔 broken heart|💯 hundred 100|✅ check yes done|❌ x cross no|⚠️ warning|❓ question|❗ exclamation|💤 zzz sleep|💬 speech|👁️ eye|🆗 ok button|🆕 new|🔒 lock|🔑 key|📌 pin|📎 paperclip|🐛 bug|🔧 wrench fix|📈 chart up|💡 bulb idea|⏰ alarm clock|📅 calendar",
  ],
];

export const CATEGORIES: { name: string; emoji: Emoji[] }[] = RAW.map(([name, list]) => ({
  name,
  emoji: list.split("|").map((item) => {
    const [e, ...n] = item.split(" ");
    return { e, n: n.join(" ") };
  }),
}));

/** Emoji whose names contain every word of the query. */
export function searchEmoji(query: string): Emoji[] {
  const words = query.toLowerCase().split(/\s+/).filter(Boolean);
  const all = CATEGORIES.flatMap((c) => c.emoji);
  if (words.length === 0) return all;
  return all.filter((x) => words.every((w) => x.n.includes(w)));
}
