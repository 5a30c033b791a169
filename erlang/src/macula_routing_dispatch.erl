%% @doc Answers one DHT message (the maps of `macula_routing_protocol') against a node.
%%
%% Pure apart from the operations it is given, so the server's `handle_message/2' and any later
%% transport share it. Unknown or malformed messages get `#{type => error, reason => ...}'; a
%% message never crashes the caller.
-module(macula_routing_dispatch).

-export([handle/2]).

-export_type([ops/0]).

-type ops() :: #{closest := fun((binary()) -> [map()] | {error, term()}),
                 store := fun((binary(), term()) -> ok | {error, term()}),
                 lookup := fun((binary()) -> {ok, [map()]} | not_found | {error, term()})}.

-spec handle(term(), ops()) -> map().
handle(Message, #{closest := Closest, store := Store, lookup := Lookup}) ->
    case macula_routing_protocol:classify(Message) of
        {find_node, Target} ->
            nodes_reply(Closest(Target), fun macula_routing_protocol:encode_find_node_reply/1);
        {store, Key, Value} ->
            case Store(Key, Value) of
                ok -> #{type => store_reply, result => ok};
                {error, Reason} -> error_reply(Reason)
            end;
        {find_value, Key} ->
            case Lookup(Key) of
                {ok, Providers} ->
                    macula_routing_protocol:encode_find_value_reply({value, Providers});
                not_found ->
                    nodes_reply(Closest(Key), fun(Nodes) ->
                        macula_routing_protocol:encode_find_value_reply({nodes, Nodes})
                    end);
                {error, Reason} ->
                    error_reply(Reason)
            end;
        {error, _} ->
            error_reply(unknown_message)
    end.

-spec nodes_reply([map()] | {error, term()}, fun(([map()]) -> map())) -> map().
nodes_reply(Nodes, Encode) when is_list(Nodes) -> Encode(Nodes);
nodes_reply({error, Reason}, _Encode) -> error_reply(Reason).

-spec error_reply(term()) -> #{type := error, reason := term()}.
error_reply(Reason) -> #{type => error, reason => Reason}.
