#!/usr/bin/env python3
"""Writes the labelled agent-memory fixture of the recall bench.

    python3 benches/recall/make_fixture.py   # rewrites benches/recall/fixture.json

One user's memories (conversation facts, preferences, dates, names, numbers,
codes, facts that changed) and questions about them, each labelled with the
memories that answer it. The questions follow the LongMemEval question
schema (`question_id`, `question_type`, `question`, `answer`,
`question_date`, `haystack_session_ids`, `answer_session_ids`): every memory
is one session of one user turn, and all questions share one haystack, the
`sessions` list, given once rather than once per question. Seeded: the same
file every run.
"""

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent / "fixture.json"
rng = random.Random(20261205)

FIRST = ["Maya", "Tom", "Priya", "Lucas", "Ana", "Kenji", "Fatima", "Oskar", "Lena", "Diego",
         "Aisha", "Mateo", "Sofia", "Ivan", "Chloe", "Ravi", "Nora", "Felix", "Yara", "Hugo",
         "Ingrid", "Samir", "Elena", "Jonas", "Mei", "Pablo", "Zara", "Emil", "Leila", "Arjun",
         "Clara", "Tariq", "Hanna", "Marco", "Noor", "Erik", "Lucia", "Omar", "Freya", "Kai"]
RELATIONS = ["sister", "brother", "manager", "dentist", "neighbour", "landlord", "accountant",
             "piano teacher", "physiotherapist", "best friend", "cousin", "niece", "nephew",
             "personal trainer", "hairdresser", "mentor", "business partner", "babysitter",
             "vet", "flatmate", "son's teacher", "daughter's football coach", "doctor",
             "plumber", "lawyer", "editor", "team lead", "godmother", "uncle", "aunt"]
PETS = ["cat", "dog", "parrot", "rabbit", "hamster", "tortoise", "goldfish", "horse"]
PET_NAMES = ["Miso", "Biscuit", "Pepper", "Luna", "Mochi", "Rocket", "Olive", "Ziggy"]
NUMBERED = [("gym locker number", "gym locker"), ("apartment number", "flat number"),
            ("office extension", "phone extension at work"), ("parking space", "parking spot"),
            ("employee number", "staff ID"), ("library card number", "library card"),
            ("frequent flyer number", "airline loyalty number"), ("bike lock combination", "bike lock code"),
            ("room number at the conference hotel", "conference hotel room"),
            ("seat number for the concert", "concert seat"), ("locker at the swimming pool", "pool locker"),
            ("desk number", "desk at the office"), ("house number", "street number of my house"),
            ("table number at the wedding", "wedding table"), ("badge number", "security badge"),
            ("platform for the morning train", "train platform"), ("shoe size", "size of shoe"),
            ("passport renewal case number", "passport case"), ("insurance policy number", "insurance policy"),
            ("student ID", "university ID number")]
ITEMS = ["a blue kettle", "two pillows", "a desk lamp", "garden gloves", "a phone case", "a yoga mat",
         "coffee beans", "a bike lock", "running shoes", "a rain jacket", "printer ink", "a chess set",
         "noise-cancelling headphones", "a cast-iron pan", "a laptop stand", "hiking socks",
         "a wall clock", "a bread knife", "a travel adapter", "a sketchbook", "a water filter",
         "a wool scarf", "a USB hub", "a paddle board", "a tent", "a camera strap", "a rice cooker",
         "a standing fan", "a box of tea", "a set of spanners"]
SHOPS = ["the hardware store", "an online shop", "the department store", "the outdoor shop",
         "the kitchen shop", "the electronics store"]
EVENTS = ["dentist appointment", "driving test", "sister's wedding", "job interview", "flight to Lisbon",
          "annual review", "marathon", "parents' anniversary dinner", "eye exam", "piano recital",
          "tax deadline", "car service", "visa appointment", "team offsite", "book club meeting",
          "vaccination", "house inspection", "thesis defence", "concert", "move to the new flat",
          "school play", "haircut", "wine tasting", "hospital check-up", "yoga retreat",
          "conference talk", "bike race", "grandmother's birthday party", "court hearing", "surgery"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
PREFS = [("coffee", ["black coffee", "flat whites", "iced lattes", "espresso"]),
         ("tea", ["green tea", "Earl Grey", "mint tea", "chai"]),
         ("seat on planes", ["window seats", "aisle seats"]),
         ("cuisine", ["Thai food", "Ethiopian food", "Neapolitan pizza", "Japanese ramen"]),
         ("music while working", ["lo-fi beats", "baroque music", "jazz piano", "silence"]),
         ("holiday", ["hiking trips", "beach holidays", "city breaks", "cycling tours"]),
         ("way to get to work", ["cycling", "the tram", "walking", "car pooling"]),
         ("sport to watch", ["tennis", "basketball", "rugby", "cycling races"]),
         ("kind of book", ["crime novels", "science fiction", "biographies", "poetry"]),
         ("breakfast", ["porridge with berries", "eggs on toast", "yoghurt and granola", "nothing but coffee"]),
         ("film genre", ["documentaries", "horror films", "romantic comedies", "westerns"]),
         ("way to be contacted", ["text messages", "email", "phone calls", "voice notes"]),
         ("time for meetings", ["early mornings", "right after lunch", "late afternoons"]),
         ("dessert", ["lemon tart", "dark chocolate", "tiramisu", "fruit salad"]),
         ("room temperature", ["a cool bedroom", "a warm living room"]),
         ("running distance", ["5 km", "10 km", "half marathons"]),
         ("programming language", ["Rust", "Python", "Go", "Haskell"]),
         ("note-taking tool", ["paper notebooks", "a plain text file", "a wiki"]),
         ("wine", ["Riesling", "Rioja", "Pinot Noir", "no wine at all"]),
         ("pizza topping", ["mushrooms", "anchovies", "pineapple", "just cheese"])]
DIET = ["I am allergic to peanuts", "I am vegetarian on weekdays", "I cannot eat gluten",
        "I avoid caffeine after 3 pm", "I am lactose intolerant", "I do not drink alcohol",
        "I am allergic to shellfish", "I eat no pork", "I am allergic to cats", "I am afraid of heights"]
CHANGES = [("city", "I live in {a}", "I moved from {a} to {b} last month", "Which city do I live in now?",
            ["Oslo", "Porto", "Kyoto", "Lyon", "Tallinn", "Bologna", "Graz", "Leeds", "Ghent", "Split"]),
           ("job", "I work as a {a}", "I left my job as a {a} and now work as a {b}", "What is my job now?",
            ["nurse", "data analyst", "teacher", "carpenter", "architect", "translator", "chef", "pilot"]),
           ("car", "I drive a {a}", "I sold the {a} and bought a {b}", "What car do I drive these days?",
            ["red Fiat", "grey Volvo", "white Tesla", "blue Skoda", "green Mini", "black Golf"]),
           ("phone", "My phone is a {a}", "I replaced my {a} with a {b}", "Which phone do I use now?",
            ["Pixel 6", "iPhone 12", "Fairphone 4", "Galaxy S21", "Nokia X20"]),
           ("gym", "I train at {a}", "I cancelled {a} and joined {b}", "Which gym am I a member of now?",
            ["Iron Works gym", "FitHub", "the climbing hall", "the YMCA", "CoreLab studio"]),
           ("bank", "My bank is {a}", "I closed my account at {a} and opened one at {b}", "Who do I bank with now?",
            ["Nordbank", "Credit Union West", "Triodos", "Monzo", "ING"]),
           ("team", "I am on the {a} team", "I moved from the {a} team to the {b} team", "Which team am I on now?",
            ["payments", "search", "billing", "mobile", "infrastructure", "design"]),
           ("diet", "I follow a {a} diet", "I stopped the {a} diet and now eat {b}", "What diet do I follow now?",
            ["keto", "vegan", "Mediterranean", "low-salt", "paleo"])]
PROVIDERS = [("internet provider", ["FibreNet", "Telia", "SkyLink", "Vodafone"]),
             ("electricity supplier", ["Octopus", "GreenPower", "Vattenfall", "EDF"]),
             ("mobile carrier", ["Lyca", "Orange", "Three", "Telenor"]),
             ("home insurer", ["Aviva", "Allianz", "Zurich", "Gjensidige"]),
             ("streaming service", ["Netflix", "Mubi", "Disney+", "Criterion Channel"]),
             ("cleaner", ["Rosa", "Bettina", "Agnes", "Miriam"]),
             ("language tutor", ["Mr Rossi", "Ms Dubois", "Herr Weber", "Señora Ruiz"]),
             ("therapist", ["Dr Okafor", "Dr Lindqvist", "Dr Haddad", "Dr Moreau"]),
             ("family doctor", ["Dr Patel", "Dr Novak", "Dr Berg", "Dr Silva"]),
             ("car mechanic", ["Quick Fix Garage", "Autohaus Meyer", "Bert's Motors", "City Auto"]),
             ("favourite cafe", ["Cafe Lumen", "The Grind", "Kaffebar Nord", "Bean There"]),
             ("running club", ["Harbour Runners", "Park Striders", "Night Owls RC", "Trail Mix Club"]),
             ("coworking space", ["The Hive", "Workshop 9", "Desk & Co", "Loft Nord"]),
             ("pharmacy", ["Apotek 1", "Boots on Main Street", "the corner pharmacy", "DocMorris"]),
             ("dog walker", ["Jamie", "Priyanka", "Theo", "Marisol"]),
             ("newspaper subscription", ["the Guardian", "Le Monde", "the FT", "Die Zeit"]),
             ("choir", ["the St Mary's choir", "the city chamber choir", "the office choir", "the gospel group"]),
             ("accountancy firm", ["Baker & Lane", "Numbers Ltd", "Kraft Partners", "Ledgerline"]),
             ("ski resort", ["Chamonix", "Zermatt", "Åre", "Kitzbühel"]),
             ("climbing partner", ["Ola", "Beatriz", "Chen", "Magnus"])]
FILLER = ["I went to the cinema on Friday", "I have been learning to juggle", "The weather was awful all week",
          "I repainted the kitchen walls", "I finished reading a long novel", "I tried a new bakery in town",
          "I am thinking about learning Italian", "I fixed the squeaky door", "I watched a documentary about bees",
          "I walked the coastal path with friends", "My houseplants need repotting", "I bought a new umbrella",
          "I signed up for a pottery class", "The neighbours had a loud party", "I cooked lentil soup",
          "I cleaned out the garage", "I took the train instead of driving", "I lost my favourite pen",
          "I helped a friend move house", "I started keeping a journal", "My laptop battery is dying",
          "I visited an art exhibition", "I planted tomatoes on the balcony", "I went swimming in the lake",
          "I watched the sunrise from the hill", "I organised my photos", "I baked sourdough bread",
          "I got a parking ticket", "I went to a jazz concert", "I built a bookshelf"]

sessions = []
questions = []


def memory(text, date):
    sid = f"s{len(sessions):04d}"
    sessions.append({"session_id": sid, "date": date, "turns": [{"role": "user", "content": text}]})
    return sid


def ask(kind, question, answer, sids, date="2026/12/01"):
    questions.append({
        "question_id": f"q{len(questions):04d}",
        "question_type": kind,
        "question": question,
        "answer": answer,
        "question_date": date,
        "answer_session_ids": sids,
    })


def day():
    return f"2026/{rng.randint(1, 10):02d}/{rng.randint(1, 28):02d}"


people = rng.sample(FIRST, len(FIRST))
for i, relation in enumerate(RELATIONS):
    name = people[i % len(people)]
    sid = memory(rng.choice([f"My {relation} is called {name}", f"My {relation}'s name is {name}",
                              f"{name} is my {relation}"]), day())
    ask("single-session-user", rng.choice([f"What is my {relation}'s name?", f"Who is my {relation}?",
                                           f"What's the name of my {relation}?"]), name, [sid])
    ask("name-lookup", f"Who is {name}?", f"my {relation}", [sid])
for pet, name in zip(PETS, PET_NAMES):
    sid = memory(f"Our {pet} is named {name}", day())
    ask("single-session-user", f"What is the name of our {pet}?", name, [sid])

used = set()
for long_name, short_name in NUMBERED:
    n = rng.randint(10, 9999)
    while n in used:
        n = rng.randint(10, 9999)
    used.add(n)
    sid = memory(f"My {long_name} is {n}", day())
    ask("single-session-user", f"What is my {short_name}?", str(n), [sid])
    ask("number-lookup", f"What is {n}?", long_name, [sid])

codes = set()
for item in ITEMS:
    code = f"{rng.choice('ABCKMR')}-{rng.randint(10000, 99999)}"
    while code in codes:
        code = f"{rng.choice('ABCKMR')}-{rng.randint(10000, 99999)}"
    codes.add(code)
    sid = memory(rng.choice([f"Order {code} is {item} from {rng.choice(SHOPS)}",
                              f"I ordered {item} under reference {code}",
                              f"The delivery {code} contains {item}"]), day())
    ask("exact-identifier", rng.choice([f"What is in order {code}?", f"What did I buy with {code}?",
                                        f"{code}: what was that?"]), item, [sid])
    ask("single-session-user", f"What was the order number for {item}?", code, [sid])

for event in EVENTS:
    date = f"{rng.randint(1, 28)} {rng.choice(MONTHS)}"
    sid = memory(rng.choice([f"My {event} is on {date}", f"The {event} is scheduled for {date}",
                              f"I have my {event} on {date}"]), day())
    ask("temporal-reasoning", rng.choice([f"When is my {event}?", f"What date is the {event}?",
                                          f"On which day do I have the {event}?"]), date, [sid])

for category, options in PREFS:
    liked = rng.choice(options)
    sid = memory(rng.choice([f"My favourite {category} is {liked}", f"When it comes to {category}, I prefer {liked}",
                              f"I always go for {liked} ({category})"]), day())
    ask("single-session-preference", rng.choice([f"What {category} do I prefer?", f"Which {category} do I like best?"]),
        liked, [sid])
    others = [o for o in options if o != liked]
    if others:
        ask("single-session-preference", f"Do I like {others[0]} or {liked} better?", liked, [sid])
TOPICS = ["nuts", "meat", "bread and pasta", "coffee in the afternoon", "milk", "drinks at a party",
          "seafood", "sausages", "visiting a friend with pets", "a cable car ride"]
for fact, topic in zip(DIET, TOPICS):
    sid = memory(fact, day())
    ask("single-session-preference", f"Is there anything about {topic} I should keep in mind?", fact, [sid])

for _, old_t, new_t, question, values in CHANGES:
    pairs = rng.sample(values, min(len(values), 4))
    a, b = pairs[0], pairs[1]
    memory(old_t.format(a=a), "2026/02/01")
    new_sid = memory(new_t.format(a=a, b=b), "2026/09/01")
    ask("knowledge-update", question, b, [new_sid])

for role, options in PROVIDERS:
    a, b = rng.sample(options, 2)
    memory(f"My {role} is {a}", "2026/01/15")
    new_sid = memory(rng.choice([f"I switched my {role} from {a} to {b}", f"From now on my {role} is {b}, not {a}"]),
                     "2026/08/15")
    ask("knowledge-update", rng.choice([f"Who is my {role} now?", f"What is my current {role}?"]), b, [new_sid])

FRIEND_CITIES = ["Bergen", "Seville", "Krakow", "Antwerp", "Dublin", "Turin", "Malmo", "Leipzig", "Nantes",
                 "Aarhus", "Valencia", "Brno", "Utrecht", "Cork", "Genoa", "Tampere", "Basel", "Ljubljana",
                 "Riga", "Coimbra"]
siblings = rng.sample(FIRST, 20)
for name, city in zip(siblings, FRIEND_CITIES):
    birthday = f"{rng.randint(1, 28)} {rng.choice(MONTHS)}"
    first = memory(f"My friend {name} lives in {city}", day())
    second = memory(f"{name}'s birthday is on {birthday}", day())
    ask("multi-session", f"When is the birthday of my friend who lives in {city}?", birthday, [first, second])

for i, text in enumerate(FILLER):
    sid = memory(text, day())
    if i % 3 == 0:
        ask("single-session-user", "Did I mention " + text[2:].lower() + "?", "yes", [sid])

rng.shuffle(sessions)
ids = [s["session_id"] for s in sessions]
for q in questions:
    q["haystack_session_ids"] = "sessions"  # the shared haystack below
fixture = {
    "about": "Cordon's recall fixture: LongMemEval-schema questions over one shared haystack "
             "(`sessions`, one user turn each); written by benches/recall/make_fixture.py.",
    "sessions": sorted(sessions, key=lambda s: s["session_id"]),
    "questions": questions,
}
OUT.write_text(json.dumps(fixture, indent=1) + "\n")
kinds = {}
for q in questions:
    kinds[q["question_type"]] = kinds.get(q["question_type"], 0) + 1
print(f"{len(sessions)} memories, {len(questions)} questions: {kinds}")
